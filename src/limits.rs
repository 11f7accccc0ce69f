//! What one request may ask of the server. Every parser on an input path checks its
//! bound before doing deep work, so that no body, query or definition can exhaust
//! the stack, the memory or the database; the README lists them.

/// Levels of JSON objects and arrays in a body (a resource three extensions deep
/// uses about ten; fhirbolt's typed model recurses once per level).
pub const MAX_JSON_DEPTH: usize = 64;

/// Levels of XML elements in a body: an XML element is about two JSON levels, so
/// that what is accepted as XML can be sent back as JSON.
pub const MAX_XML_DEPTH: usize = 32;

/// Parentheses nested in a FHIRPath expression (search parameters, subscription
/// criteria, FHIRPath Patch paths). R4's own expressions nest at most two.
pub const MAX_FHIRPATH_DEPTH: usize = 16;

/// Characters of a FHIRPath expression (R4's longest, one base each, has 159; a
/// definition over many bases a few thousand).
pub const MAX_FHIRPATH_LENGTH: usize = 8_192;

/// Characters of a SearchParameter's `code` (R4's longest has 33): it is stored in
/// every index row of the parameter.
pub const MAX_SEARCH_PARAMETER_CODE: usize = 64;

/// Reference hops in one chained parameter (`subject:Patient.organization.name`
/// is two); HAPI FHIR's default is also three.
pub const MAX_CHAIN_HOPS: usize = 3;

/// `_has` nested in `_has`.
pub const MAX_HAS_DEPTH: usize = 3;

/// Target types a parameter may expand to through untyped chains and `_has`
/// (`Basic?subject._id=x` is 146, one per resource type; a second untyped hop
/// would be 146², so it is refused with a hint to name the type).
pub const MAX_CRITERION_BRANCHES: usize = 200;

/// Search parameters in one query (repetitions included).
pub const MAX_SEARCH_PARAMS: usize = 100;

/// Values of one query, counting each comma-separated alternative.
pub const MAX_SEARCH_VALUES: usize = 1_000;

/// Keys of one `_sort`.
pub const MAX_SORT_KEYS: usize = 8;

/// Items of any array in one resource, children of any XML element (the
/// top-level `entry` of a Bundle, read one entry at a time, or of a List, is not
/// bounded by this).
pub const MAX_ARRAY_ITEMS: usize = 10_000;

/// Bytes of a value kept in the search index. A b-tree entry holds at most about
/// 2.7 kB and a quantity row holds three such values (system, code, unit) beside
/// the type, parameter and id; longer values are kept whole in the resource and
/// indexed by this prefix (see the README).
pub const MAX_INDEXED_BYTES: usize = 600;

/// Current members of a Group whose population follow-up makes one CarePlan
/// each, in the write's transaction.
pub const MAX_POPULATION_MEMBERS: usize = 2_000;

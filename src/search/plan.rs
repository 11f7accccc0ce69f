//! Search requests as data: the conditions, values, modifiers, sort keys, cursors
//! and includes of a `SearchPlan`, which the store renders as SQL and the
//! matcher evaluates in memory.

use crate::error::Issue;
use crate::fhir::datetime::Range;

use super::params::ParamType;

/// The comparison prefixes of number, date and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A token value: `code`, `system|code`, `|code` (no system) or `system|`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// `None`: any system; `Some("")`: no system; `Some(s)`: that system.
    pub system: Option<String>,
    pub code: Option<String>,
}

/// How a parameter's values are compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    None,
    Exact,
    Contains,
    Text,
    Not,
    Below,
    Above,
    Identifier,
    /// `subject:Patient=…`
    Type(String),
}

/// One value of a parameter (values of a parameter are OR-ed).
#[derive(Debug, Clone, PartialEq)]
pub enum SearchValue {
    String(String),
    Token(Token),
    /// Reference: the type when known, the id, or a full URL.
    Reference {
        target_type: Option<String>,
        id: String,
        url: Option<String>,
    },
    Date(Prefix, Range),
    /// Decimal as written, for number parameters.
    Number(Prefix, String),
    Quantity {
        prefix: Prefix,
        value: String,
        system: Option<String>,
        code: Option<String>,
    },
    Uri(String),
    /// `a$b`: one value per component of a composite parameter, with its kind.
    Composite(Vec<(ParamType, SearchValue)>),
    /// `near=latitude|longitude|distance|units`, the distance in km.
    Near {
        latitude: f64,
        longitude: f64,
        km: f64,
    },
}

/// One search condition; conditions are AND-ed.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    Id(Vec<String>),
    LastUpdated(Vec<(Prefix, Range)>),
    Param {
        param: String,
        kind: ParamType,
        modifier: Modifier,
        values: Vec<SearchValue>,
    },
    /// Several values that one index row must all meet: AND-ed conditions on a
    /// single-valued parameter (`date=ge2026-03-01&date=lt2026-03-08` on
    /// `Encounter.period`), merged so that the index finds the rows at once.
    SameRow {
        param: String,
        kind: ParamType,
        values: Vec<SearchValue>,
    },
    /// Any of these conditions (compartment membership).
    AnyOf(Vec<Condition>),
    /// All of these conditions (a chained or reverse-chained search held to the
    /// records its client reaches).
    AllOf(Vec<Condition>),
    /// `param:missing=true|false`
    Missing {
        param: String,
        kind: ParamType,
        missing: bool,
    },
    /// `subject:Patient.identifier=…`: a reference whose target, of one of the
    /// listed types, meets that type's condition.
    Chain {
        param: String,
        targets: Vec<(String, Condition)>,
    },
    /// `_has:Observation:patient:code=…`: referenced through `param` by a resource
    /// of `source_type` that meets `inner`.
    Has {
        source_type: String,
        param: String,
        inner: Box<Condition>,
    },
    /// The care-circle policy (never parsed from a query) on resources of
    /// `res_type`: those of the records of the patients whose care circle names
    /// one of these members (type, id), or a role of theirs, now; every resource
    /// of a type that is no part of a patient's record.
    InCircle {
        members: Vec<(String, String)>,
        res_type: String,
    },
    /// Subscriptions filed with this owner (never parsed from a query): each
    /// field of the owner as filed and its value, an absent value matching an
    /// absent field (`auth::owns`).
    OwnedBy(Vec<(String, Option<String>)>),
}

impl Condition {
    /// The types this condition searches through, at any depth: each chained
    /// target and each `_has` source.
    pub fn searched_through(&self) -> Vec<&str> {
        let mut types = Vec::new();
        let mut stack = vec![self];
        while let Some(condition) = stack.pop() {
            match condition {
                Condition::Chain { targets, .. } => {
                    for (target_type, inner) in targets {
                        types.push(target_type.as_str());
                        stack.push(inner);
                    }
                }
                Condition::Has {
                    source_type, inner, ..
                } => {
                    types.push(source_type.as_str());
                    stack.push(inner);
                }
                Condition::AnyOf(conditions) | Condition::AllOf(conditions) => {
                    stack.extend(conditions)
                }
                _ => {}
            }
        }
        types
    }
}

/// A parsed search over one resource type.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPlan {
    pub resource_type: String,
    /// More types searched with the same conditions (system search `_type`).
    pub other_types: Vec<String>,
    pub conditions: Vec<Condition>,
    pub count: usize,
    /// `_include` and `_revinclude`.
    pub includes: Vec<Include>,
    /// `_sort` keys, in order; empty: by id.
    pub sort: Vec<SortKey>,
    /// Where the page starts.
    pub cursor: Cursor,
    /// `_total`: when to count the matches.
    pub total: TotalMode,
    /// Parameters that were not understood (lenient handling reports them).
    pub ignored: Vec<Issue>,
}

/// When a searchset carries `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TotalMode {
    /// `_total=none`.
    None,
    /// `_total=accurate` or `estimate`, `_summary=count`: a count query.
    Accurate,
    /// Default: only when it costs nothing, i.e. the first page holds every match
    /// (as HAPI does, counting a large result would cost more than the page).
    WhenFree,
}

/// What a `_sort` key orders by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortParam {
    Id,
    LastUpdated,
    Indexed { code: String, kind: ParamType },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub param: SortParam,
    pub descending: bool,
}

/// The start of a page. Pages are keysets, stable while data changes: unsorted
/// ones by (id, type), sorted ones by the sort keys then (id, type). `_offset` is
/// also accepted, for clients that count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    Start,
    /// After this resource, in (id, type) order.
    After {
        res_id: String,
        res_type: String,
    },
    /// After the resource with these sort key values (as text; `None`: no value)
    /// and this (id, type), in `_sort` order.
    AfterSorted {
        values: Vec<Option<String>>,
        res_id: String,
        res_type: String,
    },
    Offset(usize),
}

/// `_include=Source:param[:Target]` (`reverse` for `_revinclude`); `param` is
/// `None` for `Source:*`, every reference of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub reverse: bool,
    pub iterate: bool,
    pub source_type: String,
    pub param: Option<String>,
    pub target_type: Option<String>,
}

/// How to treat a parameter the server does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    Strict,
    Lenient,
}

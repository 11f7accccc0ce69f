//! The subset of FHIRPath that the R4 search parameter expressions use: paths from
//! a resource type, `|` unions, `as T` / `.as(T)` / `.ofType(T)`, indexes (`[0]`),
//! `where(resolve() is T)` and `where(child = 'literal')`. Choice elements
//! (`Observation.effective`) select whichever `effective[x]` is present, typed by the
//! R4 definitions. Expressions outside the subset do not compile, and their
//! parameters are reported as unsupported rather than half evaluated. Pure.

use serde_json::Value;

use crate::fhir::definitions::{TypeKind, R4};
use crate::limits::{MAX_FHIRPATH_DEPTH, MAX_FHIRPATH_LENGTH};

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Union(Vec<Expr>),
    /// `start.step.step…`
    Path {
        start: Start,
        steps: Vec<Step>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Start {
    /// A resource type (`Patient`), or `Resource`/`DomainResource` for any.
    Type(String),
    /// The focus itself, whatever its type: an expression that starts with an
    /// element (`extension.where(…)`, or a composite's component `value`).
    Root,
    /// `%resource`: the resource, also from a component's element.
    Resource,
    /// A parenthesised expression.
    Group(Box<Expr>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Child(String),
    Index(usize),
    /// `as T`, `.as(T)`, `.ofType(T)`: keep nodes of type T.
    OfType(String),
    /// `where(resolve() is T)`: keep references to a T.
    ResolvesTo(String),
    /// `where(child = 'literal')`.
    ChildEquals(String, String),
}

/// A node of a resource reached by an expression, with its FHIR type.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub value: &'a Value,
    /// The FHIR type code (`HumanName`, `dateTime`, `BackboneElement` …).
    pub type_code: String,
    /// Where the children's definitions are (`HumanName`, `Encounter.participant`).
    pub(crate) def_path: String,
}

impl Node<'_> {
    /// Whether the child element `name` repeats (`None`: no such element).
    pub fn child_is_many(&self, name: &str) -> Option<bool> {
        R4.element(&format!("{}.{name}", self.def_path))
            .map(|d| d.many)
    }
}

/// Why an expression did not compile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

struct Parser<'s> {
    src: &'s str,
    pos: usize,
    /// Parentheses open at `pos`, bounded by [`MAX_FHIRPATH_DEPTH`].
    depth: usize,
}

impl<'s> Parser<'s> {
    fn rest(&self) -> &'s str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.rest().starts_with(token) {
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), Unsupported> {
        if self.eat(token) {
            Ok(())
        } else {
            Err(self.error(&format!("expected '{token}'")))
        }
    }

    fn error(&self, what: &str) -> Unsupported {
        let rest: String = self.rest().chars().take(40).collect();
        Unsupported(format!("{what} at '{rest}'"))
    }

    fn identifier(&mut self) -> Result<String, Unsupported> {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(self.error("expected a name"));
        }
        let name = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(name)
    }

    fn literal(&mut self) -> Result<String, Unsupported> {
        self.expect("'")?;
        let end = self
            .rest()
            .find('\'')
            .ok_or_else(|| self.error("unterminated string"))?;
        let text = self.rest()[..end].to_owned();
        self.pos += end + 1;
        Ok(text)
    }

    fn union(&mut self) -> Result<Expr, Unsupported> {
        let mut terms = vec![self.term()?];
        while self.eat("|") {
            terms.push(self.term()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Expr::Union(terms)
        })
    }

    fn term(&mut self) -> Result<Expr, Unsupported> {
        let mut steps_first = None;
        let start = if self.eat("(") {
            self.depth += 1;
            if self.depth > MAX_FHIRPATH_DEPTH {
                return Err(Unsupported(format!(
                    "the expression nests parentheses more than {MAX_FHIRPATH_DEPTH} deep"
                )));
            }
            let inner = self.union()?;
            self.expect(")")?;
            self.depth -= 1;
            Start::Group(Box::new(inner))
        } else if self.eat("%resource") {
            Start::Resource
        } else {
            let name = self.identifier()?;
            if name.starts_with(|c: char| c.is_ascii_lowercase()) {
                steps_first = Some(Step::Child(name));
                Start::Root
            } else {
                Start::Type(name)
            }
        };
        let mut steps: Vec<Step> = steps_first.into_iter().collect();
        loop {
            if self.eat("[") {
                self.skip_ws();
                let len = self
                    .rest()
                    .find(']')
                    .ok_or_else(|| self.error("unterminated index"))?;
                let index = self.rest()[..len]
                    .trim()
                    .parse()
                    .map_err(|_| self.error("bad index"))?;
                self.pos += len + 1;
                steps.push(Step::Index(index));
            } else if self.eat(".") {
                let name = self.identifier()?;
                match name.as_str() {
                    "as" | "ofType" => {
                        self.expect("(")?;
                        steps.push(Step::OfType(self.identifier()?));
                        self.expect(")")?;
                    }
                    "where" => {
                        self.expect("(")?;
                        steps.push(self.condition()?);
                        self.expect(")")?;
                    }
                    _ if self.rest().trim_start().starts_with('(') => {
                        return Err(self.error(&format!("function {name}() is not supported")));
                    }
                    _ => steps.push(Step::Child(name)),
                }
            } else if self.eat(" as ") || self.eat("as ") {
                steps.push(Step::OfType(self.identifier()?));
            } else {
                break;
            }
        }
        Ok(Expr::Path { start, steps })
    }

    fn condition(&mut self) -> Result<Step, Unsupported> {
        if self.eat("resolve()") {
            self.expect("is")?;
            return Ok(Step::ResolvesTo(self.identifier()?));
        }
        let child = self.identifier()?;
        self.expect("=")?;
        Ok(Step::ChildEquals(child, self.literal()?))
    }
}

/// Refuses an expression that nests parentheses beyond [`MAX_FHIRPATH_DEPTH`],
/// by a flat scan (string literals skipped): for definitions the server stores
/// whole whether or not its subset can evaluate them.
pub fn check_depth(src: &str) -> Result<(), Unsupported> {
    if src.len() > MAX_FHIRPATH_LENGTH {
        return Err(Unsupported(format!(
            "the expression is longer than {MAX_FHIRPATH_LENGTH} characters"
        )));
    }
    let (mut depth, mut in_literal, mut escaped) = (0usize, false, false);
    for c in src.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_literal => escaped = true,
            '\'' => in_literal = !in_literal,
            '(' if !in_literal => {
                depth += 1;
                if depth > MAX_FHIRPATH_DEPTH {
                    return Err(Unsupported(format!(
                        "the expression nests parentheses more than {MAX_FHIRPATH_DEPTH} deep"
                    )));
                }
            }
            ')' if !in_literal => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Compiles an expression of the subset.
pub fn compile(src: &str) -> Result<Expr, Unsupported> {
    if src.len() > MAX_FHIRPATH_LENGTH {
        return Err(Unsupported(format!(
            "the expression is longer than {MAX_FHIRPATH_LENGTH} characters"
        )));
    }
    let mut parser = Parser {
        src,
        pos: 0,
        depth: 0,
    };
    let expr = parser.union()?;
    parser.skip_ws();
    if !parser.rest().is_empty() {
        return Err(parser.error("unexpected text"));
    }
    Ok(expr)
}

pub(crate) fn node_of<'a>(value: &'a Value, type_code: &str, def_path: String) -> Node<'a> {
    Node {
        value,
        type_code: type_code.to_owned(),
        def_path,
    }
}

/// A resource as a node: its children are defined under its type.
pub(crate) fn resource_node(value: &Value) -> Option<Node<'_>> {
    let rt = value.get("resourceType")?.as_str()?;
    Some(node_of(value, rt, rt.to_owned()))
}

fn push_values<'a>(out: &mut Vec<Node<'a>>, value: &'a Value, type_code: &str, def_path: &str) {
    let mut one = |v: &'a Value| {
        if type_code == "Resource" {
            out.extend(resource_node(v));
        } else {
            out.push(node_of(v, type_code, def_path.to_owned()));
        }
    };
    match value {
        Value::Array(items) => items.iter().filter(|v| !v.is_null()).for_each(&mut one),
        Value::Null => {}
        v => one(v),
    }
}

/// The children named `name` of a node, choice elements included.
pub(crate) fn children<'a>(node: &Node<'a>, name: &str, out: &mut Vec<Node<'a>>) {
    let Some(obj) = node.value.as_object() else {
        return;
    };
    let path = format!("{}.{name}", node.def_path);
    if let Some(def) = R4.element(&path) {
        let Some(value) = obj.get(name) else { return };
        if let Some(target) = &def.content_ref {
            return push_values(out, value, "BackboneElement", target);
        }
        let type_code = def.types.first().map(String::as_str).unwrap_or("Element");
        let def_path = match type_code {
            "BackboneElement" | "Element" => path.as_str(),
            other => other,
        };
        return push_values(out, value, type_code, def_path);
    }
    // The extensions of a primitive held as an object (`_birthDate`): Element's.
    if name == "extension" {
        if let Some(extensions) = obj.get("extension") {
            return push_values(out, extensions, "Extension", "Extension");
        }
    }
    // A choice element: `effective` selects `effectiveDateTime`, `effectivePeriod` …
    for (key, value) in obj {
        let Some(suffix) = key.strip_prefix(name) else {
            continue;
        };
        if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
            continue;
        }
        if let Some(def) = R4.element(&format!("{}.{key}", node.def_path)) {
            if let Some(type_code) = def.types.first() {
                push_values(out, value, type_code, type_code);
            }
        }
    }
}

/// The primitives named `name` of a node that carry extensions and no value
/// (`_birthDate` without `birthDate`): elements that are there, without a
/// `value`, whose extensions can be read.
pub(crate) fn valueless_primitives<'a>(node: &Node<'a>, name: &str, out: &mut Vec<Node<'a>>) {
    let Some(obj) = node.value.as_object() else {
        return;
    };
    if obj.contains_key(name) {
        return;
    }
    let Some(extended) = obj.get(&format!("_{name}")) else {
        return;
    };
    let path = format!("{}.{name}", node.def_path);
    if let Some(type_code) = R4.element(&path).and_then(|def| def.types.first()) {
        push_values(out, extended, type_code, type_code);
    }
}

/// The type named in a reference (`Patient/1`, `http://x/fhir/Patient/1`, or
/// `Reference.type`).
pub fn reference_type(reference: &Value) -> Option<&str> {
    if let Some(t) = reference.get("type").and_then(Value::as_str) {
        return Some(t);
    }
    let text = reference.get("reference")?.as_str()?;
    let text = text.split("/_history/").next().unwrap_or(text);
    let mut parts = text.rsplit('/');
    let _id = parts.next()?;
    parts.next().filter(|t| R4.is_resource_type(t))
}

pub(crate) fn is_of_type(node: &Node<'_>, wanted: &str) -> bool {
    if node.type_code == wanted {
        return true;
    }
    // FHIRPath `as` is also true for a subtype: uri ⊃ url/canonical, Quantity ⊃ Age …
    matches!(
        (wanted, node.type_code.as_str()),
        ("uri", "url" | "canonical" | "oid" | "uuid")
            | (
                "Quantity",
                "Age" | "Count" | "Distance" | "Duration" | "SimpleQuantity" | "MoneyQuantity"
            )
            | ("string", "markdown" | "code" | "id")
            | ("integer", "positiveInt" | "unsignedInt")
            | ("dateTime", "instant")
    ) || (wanted == "Resource"
        && R4
            .type_def(&node.type_code)
            .is_some_and(|t| t.kind == TypeKind::Resource))
}

fn apply<'a>(step: &Step, nodes: Vec<Node<'a>>) -> Vec<Node<'a>> {
    match step {
        Step::Child(name) => {
            let mut out = Vec::new();
            for node in &nodes {
                children(node, name, &mut out);
            }
            out
        }
        Step::Index(i) => nodes.into_iter().nth(*i).into_iter().collect(),
        Step::OfType(t) => nodes.into_iter().filter(|n| is_of_type(n, t)).collect(),
        Step::ResolvesTo(t) => nodes
            .into_iter()
            .filter(|n| reference_type(n.value) == Some(t.as_str()))
            .collect(),
        Step::ChildEquals(child, literal) => nodes
            .into_iter()
            .filter(|n| n.value.get(child).and_then(Value::as_str) == Some(literal.as_str()))
            .collect(),
    }
}

/// True when the expression selects at most one node in any resource: a path of
/// non-repeating elements from a resource type (`Encounter.period`). Two conditions
/// on such a parameter may then be checked against the same index row.
pub fn is_single_valued(expr: &Expr) -> bool {
    let Expr::Path {
        start: Start::Type(t),
        steps,
    } = expr
    else {
        return false;
    };
    if !R4.is_resource_type(t) {
        return false;
    }
    let mut def_path = t.clone();
    for step in steps {
        let Step::Child(name) = step else {
            return false;
        };
        let path = format!("{def_path}.{name}");
        let Some(def) = R4.element(&path) else {
            return false;
        };
        if def.many {
            return false;
        }
        def_path = match def.types.first().map(String::as_str) {
            Some("BackboneElement" | "Element") | None => path,
            Some(other) => other.to_owned(),
        };
    }
    true
}

/// A resource as the root of evaluations.
pub fn root(resource: &Value) -> Option<Node<'_>> {
    resource_node(resource)
}

/// Evaluates a compiled expression on a resource.
pub fn evaluate<'a>(expr: &Expr, resource: &'a Value) -> Vec<Node<'a>> {
    match resource_node(resource) {
        Some(root) => evaluate_from(expr, &root, &root),
        None => Vec::new(),
    }
}

/// Evaluates a compiled expression from a focus node: an expression that starts
/// with an element name (`value.as(Quantity)`, as composite components are written)
/// is relative to it; one that starts with a type name applies when the focus is a
/// resource of that type; `%resource` is `resource`.
pub fn evaluate_from<'a>(expr: &Expr, focus: &Node<'a>, resource: &Node<'a>) -> Vec<Node<'a>> {
    let root = focus;
    match expr {
        Expr::Union(terms) => terms
            .iter()
            .flat_map(|t| evaluate_from(t, focus, resource))
            .collect(),
        Expr::Path { start, steps } => {
            let mut nodes = match start {
                Start::Group(inner) => evaluate_from(inner, focus, resource),
                Start::Root => vec![root.clone()],
                Start::Resource => vec![resource.clone()],
                Start::Type(t) => {
                    let any = t == "Resource" || t == "DomainResource";
                    if any || root.type_code == *t {
                        vec![root.clone()]
                    } else {
                        Vec::new()
                    }
                }
            };
            for step in steps {
                nodes = apply(step, nodes);
            }
            nodes
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn types(expr: &str, resource: &Value) -> Vec<String> {
        let compiled = compile(expr).expect("compiles");
        evaluate(&compiled, resource)
            .into_iter()
            .map(|n| format!("{}:{}", n.type_code, n.value))
            .collect()
    }

    #[test]
    fn paths_unions_and_choices() {
        let obs = json!({"resourceType":"Observation","status":"final","code":{"text":"poids"},
            "effectivePeriod":{"start":"2026-11-20"},"valueQuantity":{"value":70.10,"unit":"kg"},
            "subject":{"reference":"Patient/p1"}});
        assert_eq!(
            types("Observation.effective", &obs),
            vec![r#"Period:{"start":"2026-11-20"}"#]
        );
        assert_eq!(types("(Observation.value as Quantity)", &obs).len(), 1);
        assert!(types("(Observation.value as CodeableConcept)", &obs).is_empty());
        assert_eq!(types("Observation.value.as(Quantity)", &obs).len(), 1);
        assert_eq!(
            types("Observation.code | Observation.status", &obs).len(),
            2
        );
        assert!(
            types("Patient.name", &obs).is_empty(),
            "other types' branches select nothing"
        );
        assert_eq!(
            types("Resource.id", &json!({"resourceType":"Patient","id":"x"})),
            vec![r#"string:"x""#]
        );
        // R4 derives positiveInt and unsignedInt from integer.
        let patient = json!({"resourceType":"Patient","multipleBirthInteger":2,
            "photo":[{"size":1024}]});
        assert_eq!(
            types("Patient.photo.size.ofType(integer)", &patient),
            vec!["unsignedInt:1024"]
        );
        assert_eq!(
            types("Patient.multipleBirth.ofType(integer)", &patient).len(),
            1
        );
        assert!(types("Patient.photo.size.ofType(string)", &patient).is_empty());
    }

    #[test]
    fn where_resolve_and_literals() {
        let enc = json!({"resourceType":"Encounter","status":"finished","class":{"code":"IMP"},
            "subject":{"reference":"Patient/p1"},
            "participant":[{"individual":{"reference":"Practitioner/dr1"}},
                           {"individual":{"reference":"https://h.fr/fhir/PractitionerRole/r1"}}]});
        assert_eq!(
            types("Encounter.subject.where(resolve() is Patient)", &enc).len(),
            1
        );
        assert!(types("Encounter.subject.where(resolve() is Group)", &enc).is_empty());
        assert_eq!(
            types(
                "Encounter.participant.individual.where(resolve() is Practitioner)",
                &enc
            )
            .len(),
            1
        );
        assert_eq!(
            types(
                "Encounter.participant.individual.where(resolve() is PractitionerRole)",
                &enc
            )
            .len(),
            1
        );
        let p = json!({"resourceType":"Patient","telecom":[{"system":"phone","value":"06"},{"system":"email","value":"a@b.fr"}]});
        assert_eq!(types("Patient.telecom.where(system='email')", &p).len(), 1);
    }

    #[test]
    fn nested_resources_and_content_references() {
        let b = json!({"resourceType":"Bundle","type":"document","entry":[
            {"resource":{"resourceType":"Composition","status":"final"}},{"resource":{"resourceType":"Patient"}}]});
        assert_eq!(
            types("Bundle.entry[0].resource", &b),
            vec![r#"Composition:{"resourceType":"Composition","status":"final"}"#]
        );
        let q = json!({"resourceType":"Questionnaire","status":"draft","item":[{"linkId":"1","type":"group",
            "item":[{"linkId":"1.1","type":"string","code":[{"code":"x"}]}]}]});
        assert_eq!(types("Questionnaire.item.item.code", &q).len(), 1);
    }

    #[test]
    fn expressions_may_start_from_an_element() {
        let cr = json!({"resourceType":"CommunicationRequest","status":"active",
            "extension":[{"url":"https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-type",
                "valueCodeableConcept":{"coding":[{"code":"SOR"}]}}]});
        let found = types("extension.where(url='https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-type').value", &cr);
        assert_eq!(found.len(), 1);
        assert!(found[0].starts_with("CodeableConcept:"), "{found:?}");
    }

    #[test]
    fn single_valued_paths() {
        let single = |e: &str| is_single_valued(&compile(e).expect("compiles"));
        assert!(single("Encounter.period"));
        assert!(single("Patient.birthDate"));
        assert!(!single("Patient.name"));
        assert!(!single("CareTeam.participant.period"));
        assert!(!single("Encounter.period | Patient.birthDate"));
    }

    #[test]
    fn nesting_is_bounded() {
        let ok = format!("{}Patient.name{}", "(".repeat(16), ")".repeat(16));
        assert!(compile(&ok).is_ok());
        let deep = format!("{}Patient.name{}", "(".repeat(17), ")".repeat(17));
        let err = compile(&deep).expect_err("too deep");
        assert!(err.0.contains("more than 16"), "{err:?}");
        assert!(check_depth(&deep).is_err());
        let huge = format!("{}Patient.name{}", "(".repeat(20_000), ")".repeat(20_000));
        assert!(compile(&huge).is_err() && check_depth(&huge).is_err());
        assert!(check_depth(&ok).is_ok());
        assert!(check_depth("Patient.name.where(family = '((((((((((((((((((((')").is_ok());
        let long = vec!["Patient.name"; 1_000].join(" | ");
        assert!(compile(&long).is_err() && check_depth(&long).is_err());
    }

    #[test]
    fn outside_the_subset_does_not_compile() {
        assert!(compile("Patient.deceased.exists() and Patient.deceased != false").is_err());
        assert!(compile("Location.position.near()").is_err());
        assert!(compile("Patient.name").is_ok());
    }
}

//! FHIRPath as invariants (`constraint.expression`) use it: an expression
//! parsed once, then evaluated on an element of a resource to a boolean. The
//! grammar is FHIRPath's (paths, indexers, `is`/`as`, arithmetic, `|`,
//! comparisons, equality, `in`/`contains`, `and`, `or`, `xor`, `implies`,
//! literals with dates, `$this`, `%resource`, `%rootResource`, `%context`),
//! with the functions the R4 and FR Core invariants call. Nodes carry their
//! FHIR type from the R4 definitions (`fhir::fhirpath`), so `as(canonical)`,
//! `ofType` and choice elements work. A function it does not have, or an
//! expression it cannot read, makes the invariant *not evaluated*, never true.
//! Pure.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::LazyLock;

use serde_json::Value;

use crate::fhir::datetime::parse_range;
use crate::fhir::fhirpath::{
    children, is_of_type, node_of, resource_node, valueless_primitives, Node,
};

/// Deeper nesting than this is not parsed (stack safety).
const MAX_NESTING: usize = 48;
/// A collection larger than this stops the evaluation (hostile input).
const MAX_ITEMS: usize = 100_000;

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Empty,
    Bool(bool),
    Str(String),
    Num(f64, bool),
    Date(String),
    /// A name at the start of a path (an element of the focus, or its type).
    Ident(String),
    This,
    Var(String),
    Child(Box<Expr>, String),
    Call(Option<Box<Expr>>, String, Vec<Expr>),
    Index(Box<Expr>, Box<Expr>),
    Unary(char, Box<Expr>),
    Binary(Box<Expr>, String, Box<Expr>),
    TypeOp(Box<Expr>, String, String),
}

/// An invariant of the base specification, parsed.
pub struct BaseRule {
    pub key: String,
    pub human: String,
    pub invariant: Result<Invariant, NotEvaluated>,
}

/// The R4 invariants (`fhir::definitions`) by the path they are declared on
/// (`Patient`, `Patient.contact`, `Period`), parsed once.
pub static BASE: LazyLock<HashMap<String, Vec<BaseRule>>> = LazyLock::new(|| {
    crate::fhir::definitions::R4
        .invariants()
        .map(|(path, rules)| {
            let parsed = rules
                .iter()
                .map(|r| BaseRule {
                    key: r.key.clone(),
                    human: r.human.clone(),
                    invariant: Invariant::parse(corrected(&r.key).unwrap_or(&r.expression)),
                })
                .collect();
            (path.to_owned(), parsed)
        })
        .collect()
});

/// R4 invariants as the reference validator evaluates them: two whose
/// published expression is wrong on valid data (an empty `probability`; a
/// contained resource referring to its container with `#`, which `dom-3`
/// allows), corrected the way the HL7 validator corrects them.
fn corrected(key: &str) -> Option<&'static str> {
    match key {
        "ras-2" => Some(
            "(probability.exists() and (probability is decimal)) implies ((probability as decimal) <= 100)",
        ),
        "ref-1" => Some(
            "reference.exists() implies (reference = '#' or reference.startsWith('#').not() or (reference.substring(1) in %rootResource.contained.id))",
        ),
        _ => None,
    }
}

/// Why an invariant could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotEvaluated(pub String);

fn not_evaluated<T>(why: impl Into<String>) -> Result<T, NotEvaluated> {
    Err(NotEvaluated(why.into()))
}

/// A parsed invariant.
#[derive(Debug, Clone)]
pub struct Invariant(Expr);

impl Invariant {
    pub fn parse(src: &str) -> Result<Invariant, NotEvaluated> {
        if src.len() > crate::limits::MAX_FHIRPATH_LENGTH {
            return not_evaluated("too long an expression");
        }
        let mut p = Parser {
            tokens: tokenize(src)?,
            pos: 0,
            depth: 0,
            nodes: 0,
        };
        let e = p.expr(0)?;
        if p.pos != p.tokens.len() {
            return not_evaluated(format!("unexpected '{}'", p.tokens[p.pos].text()));
        }
        Ok(Invariant(e))
    }

    /// The invariant on `focus` (an element of `resource`, typed `type_code`
    /// with its children defined at `def_path`; `root` is `%rootResource`, the
    /// container of a contained resource): `Ok(false)` when it fails.
    pub fn holds(
        &self,
        resource: &Value,
        root: &Value,
        focus: &Value,
        type_code: &str,
        def_path: &str,
    ) -> Result<bool, NotEvaluated> {
        let own = resource_node(resource).ok_or_else(|| NotEvaluated("no resource".to_owned()))?;
        let container = resource_node(root).unwrap_or_else(|| own.clone());
        let this = if std::ptr::eq(resource, focus) {
            own.clone()
        } else {
            node_of(focus, type_code, def_path.to_owned())
        };
        let ctx = Ctx {
            resource: Item::Node(own),
            root: Item::Node(container),
            focus: Item::Node(this.clone()),
        };
        let out = ctx.eval(&self.0, &[Item::Node(this.clone())], &Item::Node(this))?;
        // As the reference validator: an invariant holds only when true (an
        // empty result, a comparison of uncertain precision, fails).
        Ok(boolean(&out)? == Some(true))
    }
}

// ---------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Date(String),
    Op(String),
    Var(String),
}

impl Tok {
    fn text(&self) -> String {
        match self {
            Tok::Ident(s) | Tok::Str(s) | Tok::Num(s) | Tok::Date(s) | Tok::Op(s) | Tok::Var(s) => {
                s.clone()
            }
        }
    }
}

fn tokenize(src: &str) -> Result<Vec<Tok>, NotEvaluated> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '\'' || c == '`' {
            let quote = c;
            let mut s = String::new();
            i += 1;
            loop {
                let Some(&ch) = chars.get(i) else {
                    return not_evaluated("unterminated string");
                };
                i += 1;
                if ch == quote {
                    break;
                }
                if ch == '\\' {
                    let Some(&esc) = chars.get(i) else {
                        return not_evaluated("unterminated string");
                    };
                    i += 1;
                    s.push(match esc {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        'f' => '\u{c}',
                        'u' => {
                            let hex: String =
                                chars.get(i..i + 4).unwrap_or_default().iter().collect();
                            i += 4;
                            u32::from_str_radix(&hex, 16)
                                .ok()
                                .and_then(char::from_u32)
                                .unwrap_or('\u{fffd}')
                        }
                        other => other,
                    });
                } else {
                    s.push(ch);
                }
            }
            out.push(if quote == '`' {
                Tok::Ident(s)
            } else {
                Tok::Str(s)
            });
            continue;
        }
        if c == '@' {
            let start = i + 1;
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_alphanumeric() || "-:.+TZ".contains(chars[i]))
            {
                // `@2014-01-01.toString()`: the dot of a call ends the literal.
                if chars[i] == '.' && chars.get(i + 1).is_some_and(|c| c.is_alphabetic()) {
                    break;
                }
                i += 1;
            }
            out.push(Tok::Date(chars[start..i].iter().collect()));
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || (chars[i] == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)))
            {
                i += 1;
            }
            out.push(Tok::Num(chars[start..i].iter().collect()));
            continue;
        }
        if c.is_alphabetic() || c == '_' || c == '$' || c == '%' {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if c == '%' {
                if word == "%" && chars.get(i) == Some(&'`') {
                    return not_evaluated("quoted environment variables");
                }
                out.push(Tok::Var(word[1..].to_owned()));
            } else {
                out.push(Tok::Ident(word));
            }
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        if ["<=", ">=", "!=", "!~"].contains(&two.as_str()) {
            out.push(Tok::Op(two));
            i += 2;
            continue;
        }
        if "().,[]+-*/&|<>=~{}".contains(c) {
            out.push(Tok::Op(c.to_string()));
            i += 1;
            continue;
        }
        return not_evaluated(format!("unexpected character '{c}'"));
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Parser (precedence climbing)

struct Parser {
    tokens: Vec<Tok>,
    pos: usize,
    depth: usize,
    /// Operators and steps built so far, bounded so that evaluating (and
    /// dropping) the tree, which recurses along it, stays shallow.
    nodes: usize,
}

/// The most operators and steps an invariant may have.
const MAX_NODES: usize = 512;

impl Parser {
    fn count_node(&mut self) -> Result<(), NotEvaluated> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return not_evaluated("too long an expression");
        }
        Ok(())
    }
}

/// Binary operators by precedence, lowest first.
const LEVELS: &[&[&str]] = &[
    &["implies"],
    &["or", "xor"],
    &["and"],
    &["in", "contains"],
    &["=", "~", "!=", "!~"],
    &["<", ">", "<=", ">="],
    &["|"],
    &["is", "as"],
    &["+", "-", "&"],
    &["*", "/", "div", "mod"],
];

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos)
    }

    fn peek_op(&self) -> Option<String> {
        match self.peek()? {
            Tok::Op(o) => Some(o.clone()),
            Tok::Ident(w)
                if [
                    "implies", "or", "xor", "and", "in", "contains", "is", "as", "div", "mod",
                ]
                .contains(&w.as_str()) =>
            {
                Some(w.clone())
            }
            _ => None,
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), NotEvaluated> {
        match self.peek() {
            Some(Tok::Op(o)) if o == op => {
                self.pos += 1;
                Ok(())
            }
            other => not_evaluated(format!("expected '{op}', found {other:?}")),
        }
    }

    /// An expression from precedence `level` on; each nested whole expression
    /// (parentheses, arguments, indexes) counts once against the nesting bound.
    fn expr(&mut self, level: usize) -> Result<Expr, NotEvaluated> {
        if level > 0 {
            return self.expr_at(level);
        }
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return not_evaluated("nested too deeply");
        }
        let result = self.expr_at(level);
        self.depth -= 1;
        result
    }

    fn expr_at(&mut self, level: usize) -> Result<Expr, NotEvaluated> {
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut left = self.expr(level + 1)?;
        while let Some(op) = self
            .peek_op()
            .filter(|o| LEVELS[level].contains(&o.as_str()))
        {
            self.pos += 1;
            self.count_node()?;
            if op == "is" || op == "as" {
                let t = self.type_name()?;
                left = Expr::TypeOp(Box::new(left), op, t);
            } else {
                let right = self.expr(level + 1)?;
                left = Expr::Binary(Box::new(left), op, Box::new(right));
            }
        }
        Ok(left)
    }

    fn type_name(&mut self) -> Result<String, NotEvaluated> {
        let mut name = match self.peek().cloned() {
            Some(Tok::Ident(w)) => w,
            other => return not_evaluated(format!("expected a type, found {other:?}")),
        };
        self.pos += 1;
        while matches!(self.peek(), Some(Tok::Op(o)) if o == ".") {
            if let Some(Tok::Ident(w)) = self.tokens.get(self.pos + 1).cloned() {
                self.pos += 2;
                name = w;
            } else {
                break;
            }
        }
        Ok(name)
    }

    fn unary(&mut self) -> Result<Expr, NotEvaluated> {
        // Signs in a row are counted, not recursed into (`- - - 1`).
        let mut negative = None;
        while let Some(Tok::Op(o)) = self.peek() {
            if o != "-" && o != "+" {
                break;
            }
            negative = Some(negative.unwrap_or(false) ^ (o == "-"));
            self.pos += 1;
        }
        let e = self.postfix()?;
        Ok(match negative {
            Some(true) => Expr::Unary('-', Box::new(e)),
            Some(false) => Expr::Unary('+', Box::new(e)),
            None => e,
        })
    }

    fn postfix(&mut self) -> Result<Expr, NotEvaluated> {
        let mut e = self.term()?;
        loop {
            if matches!(self.peek(), Some(Tok::Op(o)) if o == "." || o == "[") {
                self.count_node()?;
            }
            match self.peek() {
                Some(Tok::Op(o)) if o == "." => {
                    self.pos += 1;
                    let name = match self.peek().cloned() {
                        Some(Tok::Ident(w)) => w,
                        other => return not_evaluated(format!("expected a name, found {other:?}")),
                    };
                    self.pos += 1;
                    if matches!(self.peek(), Some(Tok::Op(o)) if o == "(") {
                        let args = self.args(&name)?;
                        e = Expr::Call(Some(Box::new(e)), name, args);
                    } else {
                        e = Expr::Child(Box::new(e), name);
                    }
                }
                Some(Tok::Op(o)) if o == "[" => {
                    self.pos += 1;
                    let index = self.expr(0)?;
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), Box::new(index));
                }
                _ => return Ok(e),
            }
        }
    }

    fn args(&mut self, name: &str) -> Result<Vec<Expr>, NotEvaluated> {
        self.expect("(")?;
        let mut args = Vec::new();
        if matches!(self.peek(), Some(Tok::Op(o)) if o == ")") {
            self.pos += 1;
            return Ok(args);
        }
        loop {
            // Type arguments are names, kept as identifiers.
            if matches!(name, "as" | "is" | "ofType") {
                args.push(Expr::Ident(self.type_name()?));
            } else {
                args.push(self.expr(0)?);
            }
            match self.peek() {
                Some(Tok::Op(o)) if o == "," => self.pos += 1,
                Some(Tok::Op(o)) if o == ")" => {
                    self.pos += 1;
                    return Ok(args);
                }
                other => return not_evaluated(format!("expected ',' or ')', found {other:?}")),
            }
        }
    }

    fn term(&mut self) -> Result<Expr, NotEvaluated> {
        let Some(tok) = self.peek().cloned() else {
            return not_evaluated("unexpected end");
        };
        self.pos += 1;
        match tok {
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Date(d) => Ok(Expr::Date(d)),
            Tok::Num(n) => {
                let value: f64 = n.parse().map_err(|_| NotEvaluated(format!("number {n}")))?;
                if let Some(Tok::Str(_)) = self.peek() {
                    return not_evaluated("quantity literals");
                }
                Ok(Expr::Num(value, !n.contains('.')))
            }
            Tok::Var(v) => Ok(Expr::Var(v)),
            Tok::Op(o) if o == "(" => {
                let e = self.expr(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Op(o) if o == "{" => {
                self.expect("}")?;
                Ok(Expr::Empty)
            }
            Tok::Ident(w) => match w.as_str() {
                "true" => Ok(Expr::Bool(true)),
                "false" => Ok(Expr::Bool(false)),
                "$this" => Ok(Expr::This),
                "$index" | "$total" => not_evaluated(w),
                _ if matches!(self.peek(), Some(Tok::Op(o)) if o == "(") => {
                    let args = self.args(&w)?;
                    Ok(Expr::Call(None, w, args))
                }
                _ => Ok(Expr::Ident(w)),
            },
            Tok::Op(o) => not_evaluated(format!("unexpected '{o}'")),
        }
    }
}

// ---------------------------------------------------------------------------
// Evaluation

#[derive(Debug, Clone)]
enum Item<'a> {
    Node(Node<'a>),
    Bool(bool),
    Str(String),
    Num(f64, bool),
    Date(String),
}

/// A primitive value of an item, for comparisons and arithmetic.
#[derive(Debug, Clone, PartialEq)]
enum Prim {
    Bool(bool),
    Str(String),
    Num(f64),
    Date(String),
    /// A Quantity's value and unit (its `code`, else its `unit`).
    Quantity(f64, String),
}

const QUANTITY_TYPES: &[&str] = &[
    "Quantity",
    "SimpleQuantity",
    "Age",
    "Count",
    "Distance",
    "Duration",
    "MoneyQuantity",
];

const DATE_TYPES: &[&str] = &["date", "dateTime", "instant", "time"];

fn prim(item: &Item<'_>) -> Option<Prim> {
    match item {
        Item::Bool(b) => Some(Prim::Bool(*b)),
        Item::Str(s) => Some(Prim::Str(s.clone())),
        Item::Num(n, _) => Some(Prim::Num(*n)),
        Item::Date(d) => Some(Prim::Date(d.clone())),
        Item::Node(n) => match n.value {
            Value::Bool(b) => Some(Prim::Bool(*b)),
            Value::Number(x) => x.as_f64().map(Prim::Num),
            Value::String(s) if DATE_TYPES.contains(&n.type_code.as_str()) => {
                Some(Prim::Date(s.clone()))
            }
            Value::String(s) => Some(Prim::Str(s.clone())),
            Value::Object(q) if QUANTITY_TYPES.contains(&n.type_code.as_str()) => {
                let value = q.get("value")?.as_f64()?;
                let unit = q.get("code").or_else(|| q.get("unit"))?.as_str()?;
                Some(Prim::Quantity(value, unit.to_owned()))
            }
            _ => None,
        },
    }
}

fn compare_dates(a: &str, b: &str) -> Option<Ordering> {
    let (ra, rb) = (parse_range(a)?, parse_range(b)?);
    if ra == rb {
        return Some(Ordering::Equal);
    }
    if ra.high <= rb.low {
        return Some(Ordering::Less);
    }
    if rb.high <= ra.low {
        return Some(Ordering::Greater);
    }
    (precision(a) == precision(b)).then(|| ra.low.cmp(&rb.low))
}

/// The precision of a date or dateTime: year 1, month 2, day 3, hour 4,
/// minute 5, second 6 (milliseconds are seconds' precision, as FHIRPath says).
fn precision(text: &str) -> usize {
    match text.split_once('T') {
        None => text.split('-').count(),
        Some((_, time)) => {
            let clock = time.split(['+', '-', 'Z']).next().unwrap_or(time);
            3 + clock.split(':').count().min(3)
        }
    }
}

fn compare(a: &Prim, b: &Prim) -> Option<Ordering> {
    match (a, b) {
        (Prim::Num(x), Prim::Num(y)) => x.partial_cmp(y),
        (Prim::Date(x), Prim::Date(y) | Prim::Str(y)) | (Prim::Str(x), Prim::Date(y)) => {
            compare_dates(x, y)
        }
        (Prim::Str(x), Prim::Str(y)) => Some(x.cmp(y)),
        // Quantities of one unit (without UCUM conversions: others are unknown).
        (Prim::Quantity(x, u), Prim::Quantity(y, v)) if u == v => x.partial_cmp(y),
        _ => None,
    }
}

fn equal(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    match (prim(a), prim(b)) {
        (Some(Prim::Date(x)), Some(Prim::Date(y) | Prim::Str(y)))
        | (Some(Prim::Str(x)), Some(Prim::Date(y))) => {
            compare_dates(&x, &y).map(|o| o == Ordering::Equal)
        }
        (Some(x), Some(y)) => Some(x == y),
        (None, None) => match (a, b) {
            (Item::Node(x), Item::Node(y)) => Some(x.value == y.value),
            _ => Some(false),
        },
        _ => Some(false),
    }
}

/// A key equal for items `equal` says are equal (dates aside, compared as
/// written), to find duplicates by hashing instead of pairwise.
fn item_key(item: &Item<'_>) -> String {
    match prim(item) {
        Some(Prim::Bool(b)) => format!("b{b}"),
        Some(Prim::Num(n)) => format!("n{n}"),
        Some(Prim::Str(s) | Prim::Date(s)) => format!("s{s}"),
        Some(Prim::Quantity(v, u)) => format!("q{v} {u}"),
        None => match item {
            Item::Node(n) => format!("o{}", n.value),
            _ => String::new(),
        },
    }
}

/// The items without repeats, in order.
fn distinct<'a>(items: impl IntoIterator<Item = Item<'a>>) -> Vec<Item<'a>> {
    let mut seen = std::collections::HashSet::new();
    items
        .into_iter()
        .filter(|i| seen.insert(item_key(i)))
        .collect()
}

/// A collection as a boolean: empty, a boolean, or any other single item (true).
fn boolean(items: &[Item<'_>]) -> Result<Option<bool>, NotEvaluated> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(match prim(one) {
            Some(Prim::Bool(b)) => b,
            _ => true,
        })),
        _ => not_evaluated("a boolean was expected, several items found"),
    }
}

fn single<'a, 'b>(items: &'b [Item<'a>]) -> Result<Option<&'b Item<'a>>, NotEvaluated> {
    match items {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => not_evaluated("a single item was expected, several found"),
    }
}

fn text_of(items: &[Item<'_>]) -> Result<Option<String>, NotEvaluated> {
    Ok(single(items)?.and_then(prim).and_then(|p| match p {
        Prim::Str(s) | Prim::Date(s) => Some(s),
        _ => None,
    }))
}

fn type_name_of<'i>(item: &'i Item<'_>) -> &'i str {
    match item {
        Item::Node(n) => &n.type_code,
        Item::Bool(_) => "boolean",
        Item::Str(_) => "string",
        Item::Num(_, true) => "integer",
        Item::Num(_, false) => "decimal",
        Item::Date(_) => "dateTime",
    }
}

fn is_type(item: &Item<'_>, wanted: &str) -> bool {
    let wanted = wanted
        .strip_prefix("FHIR.")
        .or_else(|| wanted.strip_prefix("System."))
        .unwrap_or(wanted);
    match item {
        Item::Node(n) if wanted == "DomainResource" => is_of_type(n, "Resource"),
        Item::Node(n) => is_of_type(n, wanted) || (wanted.eq_ignore_ascii_case(&n.type_code)),
        other => type_name_of(other).eq_ignore_ascii_case(wanted),
    }
}

/// Every child node of `node`, in document order.
fn all_children<'a>(node: &Node<'a>, out: &mut Vec<Item<'a>>) {
    let Some(obj) = node.value.as_object() else {
        return;
    };
    for (key, value) in obj {
        if key == "resourceType" {
            continue;
        }
        if let Some(primitive) = key.strip_prefix('_') {
            // A primitive's id and extensions: a child all the same (ele-1).
            if !obj.contains_key(primitive) {
                push_shadows(value, out);
            }
            continue;
        }
        let mut found = Vec::new();
        children(node, key, &mut found);
        out.extend(found.into_iter().map(Item::Node));
    }
}

fn push_shadows<'a>(value: &'a Value, out: &mut Vec<Item<'a>>) {
    match value {
        Value::Array(items) => {
            for item in items.iter().filter(|i| i.is_object()) {
                out.push(Item::Node(node_of(item, "Element", "Element".to_owned())));
            }
        }
        Value::Object(_) => out.push(Item::Node(node_of(value, "Element", "Element".to_owned()))),
        _ => {}
    }
}

struct Ctx<'a> {
    resource: Item<'a>,
    root: Item<'a>,
    focus: Item<'a>,
}

type Items<'a> = Vec<Item<'a>>;

fn bounded<'a>(items: Items<'a>) -> Result<Items<'a>, NotEvaluated> {
    if items.len() > MAX_ITEMS {
        return not_evaluated("too many items");
    }
    Ok(items)
}

impl<'a> Ctx<'a> {
    fn eval(
        &self,
        e: &Expr,
        input: &[Item<'a>],
        this: &Item<'a>,
    ) -> Result<Items<'a>, NotEvaluated> {
        Ok(match e {
            Expr::Empty => Vec::new(),
            Expr::Bool(b) => vec![Item::Bool(*b)],
            Expr::Str(s) => vec![Item::Str(s.clone())],
            Expr::Num(n, int) => vec![Item::Num(*n, *int)],
            Expr::Date(d) => vec![Item::Date(d.clone())],
            Expr::This => vec![this.clone()],
            Expr::Var(v) => match v.as_str() {
                "resource" => vec![self.resource.clone()],
                "rootResource" => vec![self.root.clone()],
                "context" => vec![self.focus.clone()],
                "ucum" => vec![Item::Str("http://unitsofmeasure.org".to_owned())],
                "sct" => vec![Item::Str("http://snomed.info/sct".to_owned())],
                "loinc" => vec![Item::Str("http://loinc.org".to_owned())],
                other => return not_evaluated(format!("%{other}")),
            },
            Expr::Ident(name) => {
                // A type name at the start of a path is its focus, when of that type.
                if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    return Ok(input.iter().filter(|i| is_type(i, name)).cloned().collect());
                }
                self.child(input, name)?
            }
            Expr::Child(base, name) => {
                let base = self.eval(base, input, this)?;
                self.child(&base, name)?
            }
            Expr::Index(base, index) => {
                let base = self.eval(base, input, this)?;
                let index = self.eval(index, input, this)?;
                match single(&index)?.and_then(prim) {
                    Some(Prim::Num(i)) if i >= 0.0 => {
                        base.into_iter().nth(i as usize).into_iter().collect()
                    }
                    _ => Vec::new(),
                }
            }
            Expr::Unary(sign, operand) => {
                let v = self.eval(operand, input, this)?;
                match (sign, single(&v)?.and_then(prim)) {
                    (_, None) => Vec::new(),
                    ('-', Some(Prim::Num(n))) => vec![Item::Num(-n, n.fract() == 0.0)],
                    ('+', Some(Prim::Num(n))) => vec![Item::Num(n, n.fract() == 0.0)],
                    _ => return not_evaluated("a sign before a non-number"),
                }
            }
            Expr::TypeOp(operand, op, t) => {
                let v = self.eval(operand, input, this)?;
                match op.as_str() {
                    "is" => match single(&v)? {
                        Some(item) => vec![Item::Bool(is_type(item, t))],
                        None => Vec::new(),
                    },
                    _ => v.into_iter().filter(|i| is_type(i, t)).collect(),
                }
            }
            Expr::Binary(l, op, r) => self.binary(l, op, r, input, this)?,
            Expr::Call(base, name, args) => {
                let focus = match base {
                    Some(b) => self.eval(b, input, this)?,
                    None => input.to_vec(),
                };
                self.call(&focus, name, args, this)?
            }
        })
    }

    /// What a reference points to: a contained resource (`#id`) or an entry of
    /// the Bundle being validated (by `fullUrl`); nothing otherwise.
    fn resolve(&self, item: &Item<'a>) -> Result<Option<Item<'a>>, NotEvaluated> {
        let Item::Node(n) = item else {
            return Ok(None);
        };
        let Some(reference) = n.value.get("reference").and_then(Value::as_str) else {
            return Ok(None);
        };
        let Item::Node(root) = &self.root else {
            return Ok(None);
        };
        if let Some(local) = reference.strip_prefix('#') {
            let contained = root.value["contained"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["id"].as_str() == Some(local));
            return Ok(contained.and_then(resource_node).map(Item::Node));
        }
        let entry = root.value["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["fullUrl"].as_str() == Some(reference));
        if let Some(resource) = entry.and_then(|e| resource_node(&e["resource"])) {
            return Ok(Some(Item::Node(resource)));
        }
        // What is stored elsewhere is not read here, as the reference
        // validator does not: nothing (`ctm-1` then holds).
        Ok(None)
    }

    fn child(&self, input: &[Item<'a>], name: &str) -> Result<Items<'a>, NotEvaluated> {
        let mut out = Vec::new();
        for item in input {
            if let Item::Node(n) = item {
                // A primitive's `value` is itself (`request.method.value`).
                if name == "value" && !n.value.is_object() && !n.value.is_array() {
                    out.push(item.clone());
                    continue;
                }
                let mut found = Vec::new();
                children(n, name, &mut found);
                if found.is_empty() {
                    valueless_primitives(n, name, &mut found);
                }
                out.extend(found.into_iter().map(Item::Node));
            }
        }
        bounded(out)
    }

    fn binary(
        &self,
        l: &Expr,
        op: &str,
        r: &Expr,
        input: &[Item<'a>],
        this: &Item<'a>,
    ) -> Result<Items<'a>, NotEvaluated> {
        let left = self.eval(l, input, this)?;
        // `implies` and `or` need their right side only sometimes; evaluating it
        // anyway is harmless (no side effects) but may fail: only when needed.
        let lb = || boolean(&left);
        let truth = |b: Option<bool>| b.map(|b| vec![Item::Bool(b)]).unwrap_or_default();
        if matches!(op, "and" | "or" | "implies") {
            let a = lb()?;
            // The left side alone may decide: false and …, true or …, false implies ….
            let decided = match (op, a) {
                ("and", Some(false)) => Some(false),
                ("or", Some(true)) | ("implies", Some(false)) => Some(true),
                _ => None,
            };
            if decided.is_some() {
                return Ok(truth(decided));
            }
            let b = boolean(&self.eval(r, input, this)?)?;
            return Ok(truth(match (op, a, b) {
                ("and", _, Some(false)) => Some(false),
                ("and", Some(true), Some(true)) => Some(true),
                ("or" | "implies", _, Some(true)) => Some(true),
                ("or", Some(false), Some(false)) => Some(false),
                ("implies", Some(true), Some(false)) => Some(false),
                _ => None,
            }));
        }
        let right = self.eval(r, input, this)?;
        Ok(match op {
            "xor" => truth(match (lb()?, boolean(&right)?) {
                (Some(a), Some(b)) => Some(a != b),
                _ => None,
            }),
            "|" => bounded(distinct(left.into_iter().chain(right)))?,
            "=" | "!=" | "~" | "!~" => {
                if left.is_empty() || right.is_empty() {
                    return Ok(Vec::new());
                }
                let same = if left.len() != right.len() {
                    Some(false)
                } else {
                    let mut all = Some(true);
                    for (a, b) in left.iter().zip(&right) {
                        let eq = if op.contains('~') {
                            Some(match (prim(a), prim(b)) {
                                (Some(Prim::Str(x)), Some(Prim::Str(y))) => {
                                    x.trim().eq_ignore_ascii_case(y.trim())
                                }
                                _ => equal(a, b) == Some(true),
                            })
                        } else {
                            equal(a, b)
                        };
                        match eq {
                            Some(true) => {}
                            Some(false) => {
                                all = Some(false);
                                break;
                            }
                            None => all = None,
                        }
                    }
                    all
                };
                truth(same.map(|s| if op.starts_with('!') { !s } else { s }))
            }
            "<" | ">" | "<=" | ">=" => {
                let (Some(a), Some(b)) = (
                    single(&left)?.and_then(prim),
                    single(&right)?.and_then(prim),
                ) else {
                    return Ok(Vec::new());
                };
                truth(compare(&a, &b).map(|o| match op {
                    "<" => o == Ordering::Less,
                    ">" => o == Ordering::Greater,
                    "<=" => o != Ordering::Greater,
                    _ => o != Ordering::Less,
                }))
            }
            "in" | "contains" => {
                let (needle, hay) = if op == "in" {
                    (&left, &right)
                } else {
                    (&right, &left)
                };
                match single(needle)? {
                    None => Vec::new(),
                    Some(n) => truth(Some(hay.iter().any(|h| equal(n, h) == Some(true)))),
                }
            }
            "+" | "-" | "*" | "/" | "div" | "mod" | "&" => {
                let (a, b) = (
                    single(&left)?.and_then(prim),
                    single(&right)?.and_then(prim),
                );
                match (op, a, b) {
                    ("&", a, b) => {
                        let s = |p: Option<Prim>| match p {
                            Some(Prim::Str(s) | Prim::Date(s)) => s,
                            _ => String::new(),
                        };
                        vec![Item::Str(s(a) + &s(b))]
                    }
                    (_, None, _) | (_, _, None) => Vec::new(),
                    ("+", Some(Prim::Str(x)), Some(Prim::Str(y))) => vec![Item::Str(x + &y)],
                    (_, Some(Prim::Num(x)), Some(Prim::Num(y))) => {
                        let v = match op {
                            "+" => x + y,
                            "-" => x - y,
                            "*" => x * y,
                            "/" if y != 0.0 => x / y,
                            "div" if y != 0.0 => (x / y).trunc(),
                            "mod" if y != 0.0 => x % y,
                            _ => return Ok(Vec::new()),
                        };
                        vec![Item::Num(v, v.fract() == 0.0 && op != "/")]
                    }
                    _ => return not_evaluated(format!("'{op}' on these values")),
                }
            }
            other => return not_evaluated(format!("operator {other}")),
        })
    }

    fn call(
        &self,
        focus: &[Item<'a>],
        name: &str,
        args: &[Expr],
        this: &Item<'a>,
    ) -> Result<Items<'a>, NotEvaluated> {
        let arg = |i: usize| -> Result<Items<'a>, NotEvaluated> {
            match args.get(i) {
                Some(a) => self.eval(a, std::slice::from_ref(this), this),
                None => not_evaluated(format!("{name}() needs an argument")),
            }
        };
        // Criteria evaluated on each item, the item as focus and $this.
        let each = |item: &Item<'a>, e: &Expr| -> Result<Option<bool>, NotEvaluated> {
            boolean(&self.eval(e, std::slice::from_ref(item), item)?)
        };
        let bool1 = |b: bool| vec![Item::Bool(b)];
        let text = || text_of(focus);
        Ok(match (name, args.len()) {
            ("empty", 0) => bool1(focus.is_empty()),
            ("exists", 0) => bool1(!focus.is_empty()),
            ("exists", 1) => {
                let mut any = false;
                for item in focus {
                    if each(item, &args[0])? == Some(true) {
                        any = true;
                        break;
                    }
                }
                bool1(any)
            }
            ("all", 1) => {
                let mut all = true;
                for item in focus {
                    if each(item, &args[0])? != Some(true) {
                        all = false;
                        break;
                    }
                }
                bool1(all)
            }
            ("where", 1) => {
                let mut out = Vec::new();
                for item in focus {
                    if each(item, &args[0])? == Some(true) {
                        out.push(item.clone());
                    }
                }
                out
            }
            ("select", 1) => {
                let mut out = Vec::new();
                for item in focus {
                    out.extend(self.eval(&args[0], std::slice::from_ref(item), item)?);
                }
                bounded(out)?
            }
            ("count", 0) => vec![Item::Num(focus.len() as f64, true)],
            // As the reference validator: `not()` of nothing is true, so that
            // `fullUrl.contains('/_history/').not()` holds without a fullUrl.
            ("not", 0) => bool1(boolean(focus)? != Some(true)),
            ("first", 0) => focus.first().cloned().into_iter().collect(),
            ("last", 0) => focus.last().cloned().into_iter().collect(),
            ("tail", 0) => focus.iter().skip(1).cloned().collect(),
            ("single", 0) => single(focus)?.cloned().into_iter().collect(),
            ("isDistinct", 0) => bool1(distinct(focus.iter().cloned()).len() == focus.len()),
            ("distinct", 0) => distinct(focus.iter().cloned()),
            ("children", 0) => {
                let mut out = Vec::new();
                for item in focus {
                    if let Item::Node(n) = item {
                        all_children(n, &mut out);
                    }
                }
                bounded(out)?
            }
            ("descendants", 0) => {
                let mut out = Vec::new();
                let mut frontier: Items<'a> = focus.to_vec();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for item in &frontier {
                        if let Item::Node(n) = item {
                            all_children(n, &mut next);
                        }
                    }
                    out.extend(next.iter().cloned());
                    out = bounded(out)?;
                    frontier = next;
                }
                out
            }
            ("hasValue", 0) => bool1(matches!(
                focus,
                [Item::Node(n)] if !n.value.is_object() && !n.value.is_array() && !n.value.is_null()
            )),
            ("ofType" | "as", 1) => match &args[0] {
                Expr::Ident(t) => focus.iter().filter(|i| is_type(i, t)).cloned().collect(),
                _ => return not_evaluated(format!("{name}() of a non-type")),
            },
            ("is", 1) => match (&args[0], single(focus)?) {
                (Expr::Ident(t), Some(item)) => bool1(is_type(item, t)),
                (_, None) => Vec::new(),
                _ => return not_evaluated("is() of a non-type"),
            },
            ("trace", _) => focus.to_vec(),
            ("iif", 2 | 3) => {
                // The criterion, like the results, is about the input.
                let c = boolean(&self.eval(&args[0], focus, this)?)?;
                if c == Some(true) {
                    self.eval(&args[1], focus, this)?
                } else if args.len() == 3 {
                    self.eval(&args[2], focus, this)?
                } else {
                    Vec::new()
                }
            }
            ("extension", 1) => {
                let url = text_of(&arg(0)?)?;
                let exts = self.child(focus, "extension")?;
                exts.into_iter()
                    .filter(|e| match e {
                        Item::Node(n) => n.value["url"].as_str() == url.as_deref(),
                        _ => false,
                    })
                    .collect()
            }
            ("combine" | "union" | "intersect" | "exclude", 1) => {
                let other = arg(0)?;
                match name {
                    "combine" => focus.iter().cloned().chain(other).collect(),
                    "union" => distinct(focus.iter().cloned().chain(other)),
                    _ => {
                        let keys: std::collections::HashSet<String> =
                            other.iter().map(item_key).collect();
                        let keep = name == "intersect";
                        let kept = focus.iter().filter(|i| keys.contains(&item_key(i)) == keep);
                        if keep {
                            distinct(kept.cloned())
                        } else {
                            kept.cloned().collect()
                        }
                    }
                }
            }
            // On nothing, the string tests are false (as the reference validator:
            // `reference.startsWith('#')` of an identifier-only Reference).
            ("startsWith" | "endsWith" | "contains" | "matches", 1) if focus.is_empty() => {
                bool1(false)
            }
            ("startsWith" | "endsWith" | "contains", 1) => {
                let (Some(s), Some(p)) = (text()?, text_of(&arg(0)?)?) else {
                    return Ok(Vec::new());
                };
                bool1(match name {
                    "startsWith" => s.starts_with(&p),
                    "endsWith" => s.ends_with(&p),
                    _ => s.contains(&p),
                })
            }
            ("matches", 1) => {
                let (Some(s), Some(p)) = (text()?, text_of(&arg(0)?)?) else {
                    return Ok(Vec::new());
                };
                let re = regex::Regex::new(&p).map_err(|e| NotEvaluated(format!("regex: {e}")))?;
                bool1(re.is_match(&s))
            }
            ("replaceMatches", 2) => {
                let (Some(s), Some(p), Some(with)) =
                    (text()?, text_of(&arg(0)?)?, text_of(&arg(1)?)?)
                else {
                    return Ok(Vec::new());
                };
                let re = regex::Regex::new(&p).map_err(|e| NotEvaluated(format!("regex: {e}")))?;
                vec![Item::Str(re.replace_all(&s, with.as_str()).into_owned())]
            }
            ("length", 0) => match text()? {
                Some(s) => vec![Item::Num(s.chars().count() as f64, true)],
                None => Vec::new(),
            },
            ("lower" | "upper", 0) => match text()? {
                Some(s) => vec![Item::Str(if name == "lower" {
                    s.to_lowercase()
                } else {
                    s.to_uppercase()
                })],
                None => Vec::new(),
            },
            ("substring", 1 | 2) => {
                let Some(s) = text()? else {
                    return Ok(Vec::new());
                };
                let start = match single(&arg(0)?)?.and_then(prim) {
                    Some(Prim::Num(n)) if n >= 0.0 => n as usize,
                    _ => return Ok(Vec::new()),
                };
                let len = match args.len() {
                    2 => match single(&arg(1)?)?.and_then(prim) {
                        Some(Prim::Num(n)) if n >= 0.0 => Some(n as usize),
                        _ => return Ok(Vec::new()),
                    },
                    _ => None,
                };
                let chars: Vec<char> = s.chars().collect();
                if start >= chars.len() {
                    Vec::new()
                } else {
                    let end = len.map_or(chars.len(), |l| start.saturating_add(l).min(chars.len()));
                    vec![Item::Str(chars[start..end].iter().collect())]
                }
            }
            ("indexOf", 1) => {
                let (Some(s), Some(p)) = (text()?, text_of(&arg(0)?)?) else {
                    return Ok(Vec::new());
                };
                let at = s.find(&p).map_or(-1.0, |b| s[..b].chars().count() as f64);
                vec![Item::Num(at, true)]
            }
            ("toString", 0) => match single(focus)?.and_then(prim) {
                Some(Prim::Str(s) | Prim::Date(s)) => vec![Item::Str(s)],
                Some(Prim::Num(n)) => vec![Item::Str(n.to_string())],
                Some(Prim::Bool(b)) => vec![Item::Str(b.to_string())],
                Some(Prim::Quantity(v, u)) => vec![Item::Str(format!("{v} '{u}'"))],
                None => Vec::new(),
            },
            ("toInteger", 0) => match single(focus)?.and_then(prim) {
                Some(Prim::Num(n)) if n.fract() == 0.0 => vec![Item::Num(n, true)],
                Some(Prim::Str(s)) => s
                    .trim()
                    .parse::<i64>()
                    .map(|n| vec![Item::Num(n as f64, true)])
                    .unwrap_or_default(),
                Some(Prim::Bool(b)) => vec![Item::Num(f64::from(u8::from(b)), true)],
                _ => Vec::new(),
            },
            ("resolve", 0) => {
                let mut out = Vec::new();
                for item in focus {
                    out.extend(self.resolve(item)?);
                }
                out
            }
            ("today" | "now", 0) => {
                let now = chrono::Utc::now();
                vec![Item::Date(if name == "today" {
                    now.format("%Y-%m-%d").to_string()
                } else {
                    crate::fhir::datetime::format_instant(now)
                })]
            }
            _ => return not_evaluated(format!("the function {name}()")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn on_resource(expr: &str, resource: &Value) -> Result<bool, NotEvaluated> {
        let rt = resource["resourceType"].as_str().unwrap_or_default();
        Invariant::parse(expr)?.holds(resource, resource, resource, rt, rt)
    }

    fn on(
        expr: &str,
        resource: &Value,
        focus: &Value,
        type_code: &str,
    ) -> Result<bool, NotEvaluated> {
        Invariant::parse(expr)?.holds(resource, resource, focus, type_code, type_code)
    }

    fn on_backbone(
        expr: &str,
        resource: &Value,
        focus: &Value,
        path: &str,
    ) -> Result<bool, NotEvaluated> {
        Invariant::parse(expr)?.holds(resource, resource, focus, "BackboneElement", path)
    }

    #[test]
    fn r4_invariants_hold_and_fail() {
        let patient = json!({"resourceType": "Patient", "contact": [{"gender": "male"}],
            "name": [{"family": "Durand"}]});
        let pat1 = "name.exists() or telecom.exists() or address.exists() or organization.exists()";
        assert_eq!(
            on_backbone(pat1, &patient, &patient["contact"][0], "Patient.contact"),
            Ok(false)
        );
        let named = json!({"name": {"family": "Durand"}});
        assert_eq!(
            on_backbone(pat1, &patient, &named, "Patient.contact"),
            Ok(true)
        );
        let ext = json!({"url": "u", "valueString": "x", "extension": [{"url": "v", "valueString": "y"}]});
        assert_eq!(
            on(
                "extension.exists() != value.exists()",
                &patient,
                &ext,
                "Extension"
            ),
            Ok(false)
        );
        let ext = json!({"url": "u", "valueString": "x"});
        assert_eq!(
            on(
                "extension.exists() != value.exists()",
                &patient,
                &ext,
                "Extension"
            ),
            Ok(true)
        );
        let per1 = "start.hasValue().not() or end.hasValue().not() or (start <= end)";
        let period = json!({"start": "2026-11-20", "end": "2026-11-19"});
        assert_eq!(on(per1, &patient, &period, "Period"), Ok(false));
        let period = json!({"start": "2026-11-20T08:00:00+01:00", "end": "2026-11-27"});
        assert_eq!(on(per1, &patient, &period, "Period"), Ok(true));
        let period = json!({"start": "2026-11-20"});
        assert_eq!(on(per1, &patient, &period, "Period"), Ok(true));
    }

    #[test]
    fn fr_core_1_reads_choice_values_and_implies() {
        let fr_core_1 = "(extension.where(url= 'https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability').extension.where(url = 'identityStatus').value.code = 'VALI') implies (identifier.where(system = 'urn:oid:1.2.250.1.213.1.4.8').exists() or identifier.where(system = 'urn:oid:1.2.250.1.213.1.4.9').exists())";
        let mut patient = json!({"resourceType": "Patient",
            "extension": [{"url": "https://hl7.fr/ig/fhir/core/StructureDefinition/fr-core-identity-reliability",
                "extension": [{"url": "identityStatus", "valueCoding": {"code": "VALI"}}]}],
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.8", "value": "x"}]});
        assert_eq!(on_resource(fr_core_1, &patient), Ok(true));
        patient["identifier"][0]["system"] = json!("urn:oid:9");
        assert_eq!(on_resource(fr_core_1, &patient), Ok(false));
        patient["extension"][0]["extension"][0]["valueCoding"]["code"] = json!("PROV");
        assert_eq!(on_resource(fr_core_1, &patient), Ok(true));
    }

    #[test]
    fn contained_references_and_descendants() {
        let dom3 = "contained.where((('#'+id in (%resource.descendants().reference | %resource.descendants().as(canonical) | %resource.descendants().as(uri) | %resource.descendants().as(url))) or descendants().where(reference = '#').exists() or descendants().where(as(canonical) = '#').exists() or descendants().where(as(canonical) = '#').exists()).not()).trace('unmatched', id).empty()";
        let mut obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "contained": [{"resourceType": "Patient", "id": "p"}],
            "subject": {"reference": "#p"}});
        assert_eq!(on_resource(dom3, &obs), Ok(true));
        obs["subject"]["reference"] = json!("Patient/1");
        assert_eq!(on_resource(dom3, &obs), Ok(false));
        let ref1 = "reference.startsWith('#').not() or (reference.substring(1).trace('url') in %rootResource.contained.id.trace('ids'))";
        assert_eq!(
            on(ref1, &obs, &json!({"reference": "#q"}), "Reference"),
            Ok(false)
        );
        assert_eq!(
            on(ref1, &obs, &json!({"reference": "#p"}), "Reference"),
            Ok(true)
        );
    }

    #[test]
    fn a_primitive_with_extensions_alone_exists_without_a_value() {
        let absent = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
        let r = json!({"resourceType": "Patient",
            "_birthDate": {"extension": [{"url": absent, "valueCode": "unknown"}]}});
        assert_eq!(on_resource("birthDate.exists()", &r), Ok(true));
        assert_eq!(on_resource("birthDate.hasValue()", &r), Ok(false));
        assert_eq!(on_resource("birthDate.value.exists()", &r), Ok(false));
        assert_eq!(
            on_resource(&format!("birthDate.extension('{absent}').exists()"), &r),
            Ok(true)
        );
        assert_eq!(on_resource("gender.exists()", &r), Ok(false));
    }

    #[test]
    fn arithmetic_strings_and_collections() {
        let r = json!({"resourceType": "Patient", "name": [{"given": ["A", "B", "A"]}]});
        assert_eq!(on_resource("name.given.count() = 3", &r), Ok(true));
        assert_eq!(on_resource("name.given.isDistinct()", &r), Ok(false));
        assert_eq!(
            on_resource("(1 + 2 * 3) = 7 and 7 div 2 = 3 and 7 mod 2 = 1", &r),
            Ok(true)
        );
        assert_eq!(
            on_resource("'ab' + 'c' = 'abc' and ('abc'.length() = 3)", &r),
            Ok(true)
        );
        assert_eq!(
            on_resource(
                "name.given.first() = 'A' and name.given.tail().first() = 'B'",
                &r
            ),
            Ok(true)
        );
        assert_eq!(
            on_resource("'urn:oid:1.2'.matches('^urn:oid:[0-9.]+$')", &r),
            Ok(true)
        );
        assert_eq!(on_resource("iif(name.exists(), true, false)", &r), Ok(true));
        assert_eq!(on_resource("{}.empty() and (true xor false)", &r), Ok(true));
        // The reference validator's reading of nothing: not() true, string tests false.
        assert_eq!(on_resource("{}.not()", &r), Ok(true));
        assert_eq!(on_resource("birthDate.startsWith('1').not()", &r), Ok(true));
        let ref1 = "reference.startsWith('#').not() or (reference.substring(1) in %rootResource.contained.id)";
        let identified = json!({"identifier": {"value": "x"}});
        assert_eq!(on(ref1, &r, &identified, "Reference"), Ok(true));
        assert_eq!(
            on_resource("'a' in ('a' | 'b') and ('a' | 'b').count() = 2", &r),
            Ok(true)
        );
        assert_eq!(on_resource("@2026-01-01 < @2026-02-01", &r), Ok(true));
        assert_eq!(
            on_resource("@2026-01-01.toString() = '2026-01-01'", &r),
            Ok(true)
        );
        // Seconds and milliseconds are one precision; a date and a dateTime are not.
        assert_eq!(
            on_resource(
                "@2026-01-01T10:00:00+01:00 < @2026-01-01T10:00:00.500+01:00",
                &r
            ),
            Ok(true)
        );
        assert_eq!(
            on_resource("@2026-01-01T10:00:00+01:00 <= @2026-01-02", &r),
            Ok(true)
        );
        assert_eq!(
            on_resource("@2026-01-01T10:00:00+01:00 <= @2026-01-01", &r),
            Ok(false)
        );
        assert_eq!(
            on_resource("name.given.distinct().count() = 2", &r),
            Ok(true)
        );
        assert_eq!(
            on_resource("('a' | 'b').intersect('b' | 'c') = 'b'", &r),
            Ok(true)
        );
        assert_eq!(on_resource("('a' | 'b').exclude('b') = 'a'", &r), Ok(true));
    }

    #[test]
    fn what_the_reference_validator_accepts_holds() {
        let r = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "contained": [{"resourceType": "Provenance", "id": "p", "target": [{"reference": "#"}]}]});
        let rule = |key: &str| {
            BASE.values()
                .flatten()
                .find(|r| r.key == key)
                .and_then(|r| r.invariant.as_ref().ok())
                .expect(key)
        };
        // rng-2 on a Range of one unit, and not across units it cannot convert.
        let range = json!({"low": {"value": 1, "unit": "mg"}, "high": {"value": 2, "unit": "mg"}});
        assert_eq!(
            rule("rng-2").holds(&r, &r, &range, "Range", "Range"),
            Ok(true)
        );
        let inverted =
            json!({"low": {"value": 3, "unit": "mg"}, "high": {"value": 2, "unit": "mg"}});
        assert_eq!(
            rule("rng-2").holds(&r, &r, &inverted, "Range", "Range"),
            Ok(false)
        );
        // ref-1: a contained resource referring to its container.
        let back = json!({"reference": "#"});
        assert_eq!(
            rule("ref-1").holds(&r, &r, &back, "Reference", "Reference"),
            Ok(true)
        );
        // ras-2 without a probability.
        let prediction = json!({"outcome": {"text": "x"}});
        let risk = json!({"resourceType": "RiskAssessment"});
        assert_eq!(
            rule("ras-2").holds(
                &risk,
                &risk,
                &prediction,
                "BackboneElement",
                "RiskAssessment.prediction"
            ),
            Ok(true)
        );
        // A primitive's value is itself.
        let request = json!({"method": "POST"});
        assert_eq!(
            Invariant::parse("method.value = 'POST'")
                .expect("parsed")
                .holds(&r, &r, &request, "BackboneElement", "Bundle.entry.request"),
            Ok(true)
        );
    }

    #[test]
    fn every_base_invariant_parses() {
        let failed: Vec<String> = BASE
            .values()
            .flatten()
            .filter_map(|r| {
                r.invariant
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {}", r.key, e.0))
            })
            .collect();
        assert!(BASE.len() > 200);
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn resolve_reads_contained_resources() {
        let ctm1 = "onBehalfOf.exists() implies (member.resolve().iif(empty(), true, ofType(Practitioner).exists()))";
        let team = json!({"resourceType": "CareTeam",
            "contained": [{"resourceType": "Patient", "id": "p"}]});
        let on_behalf = |member: &str| json!({"member": {"reference": member}, "onBehalfOf": {"reference": "Organization/o"}});
        let backbone = |p: &Value| {
            Invariant::parse(ctm1)?.holds(
                &team,
                &team,
                p,
                "BackboneElement",
                "CareTeam.participant",
            )
        };
        assert_eq!(backbone(&on_behalf("Practitioner/1")), Ok(true));
        // What is stored elsewhere is not read (as the reference validator).
        assert_eq!(backbone(&on_behalf("Patient/1")), Ok(true));
        assert_eq!(backbone(&on_behalf("#p")), Ok(false));
        assert_eq!(backbone(&on_behalf("urn:uuid:1")), Ok(true));
        assert_eq!(
            on_resource(
                "subject.resolve().exists()",
                &json!({"resourceType": "Observation", "subject": {"reference": "Patient/1"}})
            ),
            Ok(false)
        );
    }

    #[test]
    fn what_it_cannot_evaluate_is_said() {
        let r = json!({"resourceType": "Patient"});
        assert!(on_resource("htmlChecks()", &r).is_err());
        assert!(on_resource("name.exists(", &r).is_err());
        assert!(on_resource("conformsTo('x')", &r).is_err());
        let deep = "(".repeat(200) + "true" + &")".repeat(200);
        assert!(on_resource(&deep, &r).is_err());
        let signs = "-".repeat(8_000) + "1 = 1";
        assert_eq!(on_resource(&signs, &r), Ok(true));
        let chain = "name".to_owned() + &".given".repeat(1_000) + ".exists()";
        assert!(on_resource(&chain, &r).is_err());
        let ands = vec!["true"; 1_000].join(" and ");
        assert!(on_resource(&ands, &r).is_err());
        assert!(on_resource(&"x".repeat(10_000), &r).is_err());
        assert_eq!(
            on_resource("'abc'.substring(1, 100000000000000000000) = 'bc'", &r),
            Ok(true)
        );
    }
}

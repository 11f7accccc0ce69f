//! Search requests as data: parsing of the query string into a plan that the store
//! renders as SQL, against the R4 search parameter table. Pure: no I/O.

pub mod compartment;
pub mod index;
pub mod matcher;
pub mod params;
mod parse;
mod plan;
mod values;

pub use parse::{is_searchable, parse, supported_params};
pub use plan::{
    Condition, Cursor, Handling, Include, Modifier, Prefix, SearchPlan, SearchValue, SortKey,
    SortParam, Token, TotalMode,
};
pub use values::{encode_sorted_cursor, parse_token};

/// Query strings are the wire format of search requests (`fhir::query`).
pub use crate::fhir::query::{listed_types, page_url, parse_criteria, parse_form};

/// Default and largest page sizes.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::params::test_table;

    #[test]
    fn decimals_beyond_the_database_are_refused() {
        let q = |v: &str| vec![("length".to_owned(), v.to_owned())];
        assert!(parse(test_table(), "Encounter", &q("1e200000"), Handling::Lenient).is_err());
        assert!(parse(
            test_table(),
            "Encounter",
            &q("1e-200000"),
            Handling::Lenient
        )
        .is_err());
        assert!(parse(test_table(), "Encounter", &q("4.5e2"), Handling::Lenient).is_ok());
    }

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn tokens() {
        assert_eq!(
            parse_token("abc"),
            Token {
                system: None,
                code: Some("abc".into())
            }
        );
        assert_eq!(
            parse_token("s|c"),
            Token {
                system: Some("s".into()),
                code: Some("c".into())
            }
        );
        assert_eq!(
            parse_token("|c"),
            Token {
                system: Some(String::new()),
                code: Some("c".into())
            }
        );
        assert_eq!(
            parse_token("s|"),
            Token {
                system: Some("s".into()),
                code: None
            }
        );
        assert_eq!(
            parse_token(r"a\|b"),
            Token {
                system: None,
                code: Some("a|b".into())
            }
        );
    }

    #[test]
    fn or_values_and_escapes() {
        let plan = parse(
            test_table(),
            "Patient",
            &pairs(&[("identifier", r"s|a\,b,s|c")]),
            Handling::Strict,
        )
        .expect("plan");
        let Condition::Param { values, .. } = &plan.conditions[0] else {
            panic!("token")
        };
        assert_eq!(values.len(), 2);
        let SearchValue::Token(first) = &values[0] else {
            panic!("token value")
        };
        assert_eq!(first.code.as_deref(), Some("a,b"));
    }

    #[test]
    fn strict_rejects_unknown_lenient_reports() {
        let q = pairs(&[("nickname", "x")]);
        assert_eq!(
            parse(test_table(), "Patient", &q, Handling::Strict)
                .expect_err("strict")
                .status(),
            400
        );
        let plan = parse(test_table(), "Patient", &q, Handling::Lenient).expect("lenient");
        assert_eq!(plan.ignored.len(), 1);
        assert!(plan.conditions.is_empty());
    }

    #[test]
    fn dates_and_count() {
        let plan = parse(
            test_table(),
            "Patient",
            &pairs(&[("_lastUpdated", "ge2026-01"), ("_count", "5000")]),
            Handling::Strict,
        )
        .expect("plan");
        assert_eq!(plan.count, MAX_COUNT);
        let Condition::LastUpdated(v) = &plan.conditions[0] else {
            panic!("date")
        };
        assert_eq!(v[0].0, Prefix::Ge);
        assert!(parse(
            test_table(),
            "Patient",
            &pairs(&[("_lastUpdated", "soon")]),
            Handling::Strict
        )
        .is_err());
        assert!(parse(
            test_table(),
            "Patient",
            &pairs(&[("_count", "-1")]),
            Handling::Strict
        )
        .is_err());
    }

    #[test]
    fn identifier_only_where_the_type_has_one() {
        assert!(supported_params(test_table(), "Patient")
            .iter()
            .any(|p| p.0 == "identifier"));
        assert!(!supported_params(test_table(), "Parameters")
            .iter()
            .any(|p| p.0 == "identifier"));
    }
}

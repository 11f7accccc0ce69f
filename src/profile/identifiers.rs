//! French identifiers whose system says what the value must be: the NIR
//! (INS-NIR and its test and demonstration authorities, the NSS), the RPPS, the
//! IdNat_PS and the FINESS. Each wrong value is named by the rule it breaks.
//! Pure.

/// The INS-NIR authority (also the NSS's system in FR Core).
pub const INS_NIR: &str = "urn:oid:1.2.250.1.213.1.4.8";
/// The INS-NIR of fictitious test patients.
pub const INS_NIR_TEST: &str = "urn:oid:1.2.250.1.213.1.4.10";
/// The INS-NIR of fictitious demonstration patients.
pub const INS_NIR_DEMO: &str = "urn:oid:1.2.250.1.213.1.4.11";
pub const RPPS: &str = "https://rpps.esante.gouv.fr";
pub const IDNAT_PS: &str = "urn:oid:1.2.250.1.71.4.2.1";
pub const FINESS: &str = "https://finess.esante.gouv.fr";

/// A rule an identifier's value breaks: its name and what it says.
#[derive(Debug, PartialEq, Eq)]
pub struct Broken {
    pub rule: &'static str,
    pub message: String,
}

fn broken(rule: &'static str, message: impl Into<String>) -> Option<Broken> {
    Some(Broken {
        rule,
        message: message.into(),
    })
}

/// The rule `value` breaks for `system`, if any; systems without rules pass.
pub fn check(system: &str, value: &str) -> Option<Broken> {
    match system {
        INS_NIR | INS_NIR_TEST | INS_NIR_DEMO => nir(value),
        RPPS => rpps(value),
        IDNAT_PS => idnat_ps(value),
        FINESS => finess(value),
        _ => None,
    }
}

/// A NIR: 13 characters (sex, year, month, department with Corsica's `2A` and
/// `2B`, commune, order) and a 2-digit key, 97 − (number mod 97), where `2A`
/// counts as 19 and `2B` as 18.
fn nir(value: &str) -> Option<Broken> {
    let bytes = value.as_bytes();
    if !value.is_ascii() {
        return broken(
            "fr-nir-format",
            format!("a NIR is made of digits (the department may be 2A or 2B), '{value}' is not"),
        );
    }
    if bytes.len() != 15 {
        return broken(
            "fr-nir-length",
            format!(
                "a NIR has 15 characters (13 and a 2-digit key), '{value}' has {}",
                value.chars().count()
            ),
        );
    }
    let department = &value[5..7];
    let corsica = match department {
        "2A" => Some("19"),
        "2B" => Some("18"),
        _ => None,
    };
    let digits_ok = bytes
        .iter()
        .enumerate()
        .all(|(i, b)| b.is_ascii_digit() || (corsica.is_some() && (i == 5 || i == 6)));
    if !digits_ok {
        return broken(
            "fr-nir-format",
            format!("a NIR is made of digits (the department may be 2A or 2B), '{value}' is not"),
        );
    }
    let number: String = match corsica {
        Some(replacement) => format!("{}{replacement}{}", &value[..5], &value[7..13]),
        None => value[..13].to_owned(),
    };
    let number: u64 = number.parse().ok()?;
    let key: u64 = value[13..].parse().ok()?;
    let expected = 97 - number % 97;
    (key != expected).then(|| Broken {
        rule: "fr-nir-key",
        message: format!(
            "the key of the NIR '{value}' is {key:02}, its number gives {expected:02} (97 − number mod 97)"
        ),
    })
}

/// The Luhn check over a string of ASCII digits.
fn luhn_valid(digits: &str) -> bool {
    let sum: u32 = digits
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 1 {
                let doubled = d * 2;
                if doubled > 9 {
                    doubled - 9
                } else {
                    doubled
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// An RPPS number: 11 digits, the last a Luhn check digit.
fn rpps(value: &str) -> Option<Broken> {
    if value.len() != 11 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return broken(
            "fr-rpps-format",
            format!("an RPPS number is 11 digits, '{value}' is not"),
        );
    }
    (!luhn_valid(value)).then(|| Broken {
        rule: "fr-rpps-key",
        message: format!("the check digit of the RPPS number '{value}' is wrong (Luhn)"),
    })
}

/// An IdNat_PS: `8` and an RPPS number, `0` and an ADELI number (9
/// characters), or `3`, `4` or `5` and a structure's FINESS, SIREN or SIRET,
/// `/` and the structure's own identifier of the person.
fn idnat_ps(value: &str) -> Option<Broken> {
    let (prefix, rest) = value.split_at_checked(1).unwrap_or(("", ""));
    match prefix {
        "8" => rpps(rest).map(|b| Broken {
            rule: "fr-idnatps-rpps",
            message: format!("the IdNat_PS '{value}' is 8 and an RPPS number, and {}", b.message),
        }),
        "0" if rest.len() == 9 && rest.bytes().all(|b| b.is_ascii_alphanumeric()) => None,
        "3" | "4" | "5" if rest.split_once('/').is_some_and(|(s, local)| {
            !s.is_empty() && !local.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric())
        }) =>
        {
            None
        }
        _ => broken(
            "fr-idnatps-prefix",
            format!(
                "an IdNat_PS is 0 and an ADELI number (9 characters), 8 and an RPPS number, or 3, 4 or 5, a structure's identifier, '/' and its own; '{value}' is none of them"
            ),
        ),
    }
}

/// A FINESS number: 9 characters, the department first (Corsica's `2A`, `2B`),
/// the last a Luhn check digit over the digits (Corsica's letters count as 0).
fn finess(value: &str) -> Option<Broken> {
    let corsica = value.starts_with("2A") || value.starts_with("2B");
    let well_formed = value.len() == 9
        && value
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_digit() || (corsica && i == 1));
    if !well_formed {
        return broken(
            "fr-finess-format",
            format!("a FINESS number is 9 characters (digits, the department may be 2A or 2B), '{value}' is not"),
        );
    }
    let digits: String = value
        .chars()
        .map(|c| if c.is_ascii_digit() { c } else { '0' })
        .collect();
    (!luhn_valid(&digits)).then(|| Broken {
        rule: "fr-finess-key",
        message: format!("the check digit of the FINESS number '{value}' is wrong (Luhn)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(system: &str, value: &str) -> Option<&'static str> {
        check(system, value).map(|b| b.rule)
    }

    #[test]
    fn a_nir_key_is_97_minus_the_number_mod_97() {
        assert_eq!(rule(INS_NIR, "255081416802538"), None);
        assert_eq!(rule(INS_NIR, "255081416802539"), Some("fr-nir-key"));
        assert_eq!(rule(INS_NIR_TEST, "189127512501282"), None);
        // FR Core's published Patient example: its key should be 12.
        assert_eq!(rule(INS_NIR, "123456789012244"), Some("fr-nir-key"));
        assert_eq!(rule(INS_NIR, "123456789012212"), None);
    }

    #[test]
    fn a_nir_has_15_digits_and_corsica_counts_as_19_and_18() {
        assert_eq!(rule(INS_NIR, "25508141680253"), Some("fr-nir-length"));
        assert_eq!(rule(INS_NIR, "2550814168025X8"), Some("fr-nir-format"));
        assert_eq!(rule(INS_NIR, "2550A14168025 8"), Some("fr-nir-format"));
        // 2A: the number counts as 1 80 01 19 004 123 → key 97 − n mod 97.
        let key_2a = 97 - 1_800_119_004_123u64 % 97;
        assert_eq!(rule(INS_NIR, &format!("180012A004123{key_2a:02}")), None);
        assert_eq!(
            rule(INS_NIR, &format!("180012A004123{:02}", key_2a % 97 + 1)),
            Some("fr-nir-key")
        );
        let key_2b = 97 - 1_800_118_004_123u64 % 97;
        assert_eq!(rule(INS_NIR, &format!("180012B004123{key_2b:02}")), None);
        // Letters elsewhere than the department are not a NIR.
        assert_eq!(rule(INS_NIR, "1800A2A00412301"), Some("fr-nir-format"));
        // Nor other characters, however many bytes they take.
        assert_eq!(rule(INS_NIR, "1234é6789012345"), Some("fr-nir-format"));
        assert_eq!(rule(INS_NIR, "1234é678901234"), Some("fr-nir-format"));
    }

    #[test]
    fn rpps_numbers_carry_a_luhn_digit() {
        assert_eq!(rule(RPPS, "10000000009"), None);
        assert_eq!(rule(RPPS, "10000000007"), Some("fr-rpps-key"));
        assert_eq!(rule(RPPS, "1000000000"), Some("fr-rpps-format"));
        assert_eq!(rule(RPPS, "1000000000a"), Some("fr-rpps-format"));
    }

    #[test]
    fn idnat_ps_prefixes() {
        assert_eq!(rule(IDNAT_PS, "810000000009"), None);
        assert_eq!(rule(IDNAT_PS, "810000000007"), Some("fr-idnatps-rpps"));
        assert_eq!(rule(IDNAT_PS, "0751234567"), None);
        assert_eq!(rule(IDNAT_PS, "3750712184/12345"), None);
        assert_eq!(rule(IDNAT_PS, "3750712184"), Some("fr-idnatps-prefix"));
        assert_eq!(rule(IDNAT_PS, "9123"), Some("fr-idnatps-prefix"));
        assert_eq!(rule(IDNAT_PS, ""), Some("fr-idnatps-prefix"));
        assert_eq!(rule(IDNAT_PS, "é10000000009"), Some("fr-idnatps-prefix"));
        assert_eq!(rule(FINESS, "7507121é"), Some("fr-finess-format"));
    }

    #[test]
    fn finess_numbers_carry_a_luhn_digit() {
        // AP-HP (legal entity) and the CHU de Bordeaux.
        assert_eq!(rule(FINESS, "750712184"), None);
        assert_eq!(rule(FINESS, "330781196"), None);
        assert_eq!(rule(FINESS, "750712185"), Some("fr-finess-key"));
        assert_eq!(rule(FINESS, "75071218"), Some("fr-finess-format"));
        assert_eq!(rule(FINESS, "7507121A4"), Some("fr-finess-format"));
    }

    #[test]
    fn other_systems_have_no_rule() {
        assert_eq!(rule("urn:oid:1.2.3", "anything"), None);
    }
}

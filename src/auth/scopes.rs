//! SMART on FHIR scopes, v1 (`patient/Encounter.read`, `user/*.write`,
//! `system/*.*`) and v2 (`patient/Encounter.rs?category=…`, `user/CareTeam.cruds`):
//! what a token's scopes let its client do, by resource type and interaction.
//! Scopes that are not resource scopes (`openid`, `fhirUser`, `launch/patient`,
//! `offline_access` …) grant nothing here; a malformed resource scope grants
//! nothing either. Pure.

/// Whose data a grant is about (the part before the `/`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Context {
    /// The patient of the launch context (`patient` claim).
    Patient,
    /// What the user (`fhirUser`) may see.
    User,
    /// A backend service: no user, no patient.
    System,
}

/// A FHIR interaction as SMART v2 names them: `c`reate, `r`ead (read, vread,
/// an instance's history), `u`pdate (update, patch), `d`elete, `s`earch (search,
/// the history of a type or of the system).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Create,
    Read,
    Update,
    Delete,
    Search,
}

impl Interaction {
    const ORDER: [(Interaction, char); 5] = [
        (Interaction::Create, 'c'),
        (Interaction::Read, 'r'),
        (Interaction::Update, 'u'),
        (Interaction::Delete, 'd'),
        (Interaction::Search, 's'),
    ];

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    pub fn letter(self) -> char {
        Self::ORDER
            .iter()
            .find(|(i, _)| *i == self)
            .map_or('?', |(_, c)| *c)
    }
}

/// What one scope grants.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Grant {
    pub context: Context,
    /// `None` for `*`.
    pub res_type: Option<String>,
    /// The interactions, one bit each.
    interactions: u8,
    /// A v2 scope's search restriction (`?category=…`): only resources that match.
    pub query: Vec<(String, String)>,
}

impl Grant {
    pub fn allows(&self, res_type: &str, interaction: Interaction) -> bool {
        self.interactions & interaction.bit() != 0
            && self.res_type.as_deref().is_none_or(|t| t == res_type)
    }
}

/// Parses one scope; `None` when it is not a resource scope or is malformed.
pub fn parse_scope(scope: &str) -> Option<Grant> {
    let (context, rest) = scope.split_once('/')?;
    let context = match context {
        "patient" => Context::Patient,
        "user" => Context::User,
        "system" => Context::System,
        _ => return None,
    };
    let (resource, rest) = rest.split_once('.')?;
    let (permissions, query) = match rest.split_once('?') {
        Some((p, q)) => (p, crate::search::parse_form(q)),
        None => (rest, Vec::new()),
    };
    let res_type = match resource {
        "*" => None,
        t if !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric()) => Some(t.to_owned()),
        _ => return None,
    };
    let all = |list: &[Interaction]| list.iter().fold(0, |bits, i| bits | i.bit());
    let interactions = match permissions {
        // v1
        "read" if query.is_empty() => all(&[Interaction::Read, Interaction::Search]),
        "write" if query.is_empty() => all(&[
            Interaction::Create,
            Interaction::Update,
            Interaction::Delete,
        ]),
        "*" if query.is_empty() => all(&Interaction::ORDER.map(|(i, _)| i)),
        // v2: letters of `cruds`, in that order, each at most once.
        letters => {
            let mut order = Interaction::ORDER.iter();
            let mut bits = 0;
            for letter in letters.chars() {
                let (interaction, _) = order.find(|(_, c)| *c == letter)?;
                bits |= interaction.bit();
            }
            if bits == 0 {
                return None;
            }
            bits
        }
    };
    Some(Grant {
        context,
        res_type,
        interactions,
        query,
    })
}

/// The resource grants of a token's `scope` claim (space-separated).
pub fn parse_scopes(scopes: &str) -> Vec<Grant> {
    scopes.split_whitespace().filter_map(parse_scope).collect()
}

/// What the grants say of one interaction on one type.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'g> {
    /// No grant allows it.
    Denied,
    /// Allowed, for every resource of the type (within the grant's context).
    Allowed(Context),
    /// Allowed only for the resources that match one of these queries (v2 scopes
    /// with a search restriction), each with its context.
    Restricted(Vec<(Context, &'g [(String, String)])>),
}

/// Whether `grants` allow `interaction` on `res_type`. An unrestricted grant wins
/// over restricted ones; among unrestricted grants, the widest context
/// (system, then user, then patient).
pub fn decide<'g>(grants: &'g [Grant], res_type: &str, interaction: Interaction) -> Decision<'g> {
    let allowing: Vec<&Grant> = grants
        .iter()
        .filter(|g| g.allows(res_type, interaction))
        .collect();
    let widest = [Context::System, Context::User, Context::Patient]
        .into_iter()
        .find(|c| {
            allowing
                .iter()
                .any(|g| g.context == *c && g.query.is_empty())
        });
    match (widest, allowing.is_empty()) {
        (Some(context), _) => Decision::Allowed(context),
        (None, true) => Decision::Denied,
        (None, false) => Decision::Restricted(
            allowing
                .iter()
                .map(|g| (g.context, g.query.as_slice()))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interaction::*;

    fn allowed(scopes: &str, res_type: &str, interaction: Interaction) -> bool {
        !matches!(
            decide(&parse_scopes(scopes), res_type, interaction),
            Decision::Denied
        )
    }

    #[test]
    fn v1_scopes() {
        assert!(allowed("patient/Encounter.read", "Encounter", Read));
        assert!(allowed("patient/Encounter.read", "Encounter", Search));
        assert!(!allowed("patient/Encounter.read", "Encounter", Create));
        assert!(!allowed("patient/Encounter.read", "Patient", Read));
        assert!(allowed("user/*.write", "CareTeam", Update));
        assert!(allowed("user/*.write", "CareTeam", Delete));
        assert!(!allowed("user/*.write", "CareTeam", Read));
        for i in [Create, Read, Update, Delete, Search] {
            assert!(allowed("system/*.*", "Task", i));
        }
    }

    #[test]
    fn v2_scopes() {
        assert!(allowed("user/CareTeam.cruds", "CareTeam", Delete));
        assert!(allowed("patient/Encounter.rs", "Encounter", Search));
        assert!(!allowed("patient/Encounter.rs", "Encounter", Update));
        assert!(allowed("system/Patient.cu", "Patient", Update));
        assert!(!allowed("system/Patient.cu", "Patient", Read));
        // Letters out of order, repeated or unknown: the scope grants nothing.
        for malformed in [
            "user/Patient.sr",
            "user/Patient.rr",
            "user/Patient.rx",
            "user/Patient.",
            "user/Pat-ient.r",
            "nobody/Patient.r",
            "user/Patient.read?x=1",
        ] {
            assert!(parse_scope(malformed).is_none(), "{malformed}");
        }
        // Not resource scopes.
        assert!(parse_scopes("openid fhirUser launch/patient offline_access").is_empty());
    }

    #[test]
    fn restricted_and_widest() {
        let grants = parse_scopes(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
        );
        match decide(&grants, "Observation", Search) {
            Decision::Restricted(queries) => {
                assert_eq!(queries.len(), 1);
                assert_eq!(queries[0].0, Context::Patient);
                assert_eq!(queries[0].1[0].0, "category");
                assert!(queries[0].1[0].1.ends_with("|laboratory"));
            }
            other => panic!("{other:?}"),
        }
        let both = parse_scopes("patient/Observation.rs?category=x user/Observation.rs");
        assert_eq!(
            decide(&both, "Observation", Read),
            Decision::Allowed(Context::User)
        );
        let wide = parse_scopes("patient/*.read system/Encounter.r");
        assert_eq!(
            decide(&wide, "Encounter", Read),
            Decision::Allowed(Context::System)
        );
        assert_eq!(
            decide(&wide, "Encounter", Search),
            Decision::Allowed(Context::Patient)
        );
        assert_eq!(Interaction::Update.letter(), 'u');
    }
}

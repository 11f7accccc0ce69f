//! Shared care plans (*plan personnalisé de coordination en santé*): which status
//! changes of a `CarePlan` make sense (one table), and the Subscriptions through
//! which the members of its care team hear of each change. Pure.

use serde_json::Value;

use super::recipients::{self, Recipient};

/// Where a plan may go from one status; anything else is refused, except
/// `entered-in-error` (a correction) and keeping the status.
const STEPS: &[(&str, &[&str])] = &[
    ("draft", &["active", "revoked"]),
    ("active", &["on-hold", "completed", "revoked"]),
    ("on-hold", &["active", "completed", "revoked"]),
];

/// The statuses a plan may be created in.
const STARTS: &[&str] = &["draft", "active"];

/// Whether a plan's members still follow it.
pub fn is_open(plan: &Value) -> bool {
    matches!(
        plan["status"].as_str(),
        Some("draft" | "active" | "on-hold")
    )
}

fn listed(codes: &[&str]) -> String {
    match codes.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Checks a write of a CarePlan: `previous` the live version it replaces, `next`
/// the new one (none for a delete, always allowed). `Err`: the refusal (409),
/// naming its rule.
pub fn check(previous: Option<&Value>, next: Option<&Value>) -> Result<(), String> {
    let Some(to) = next.and_then(|n| n["status"].as_str()) else {
        return Ok(());
    };
    let Some(from) = previous.and_then(|p| p["status"].as_str()) else {
        return match STARTS.contains(&to) {
            true => Ok(()),
            false => Err(format!(
                "careplan-starts-draft-or-active: a CarePlan is created {}, not {to}",
                listed(STARTS)
            )),
        };
    };
    if from == to || to == "entered-in-error" {
        return Ok(());
    }
    let allowed = STEPS
        .iter()
        .find(|(f, _)| *f == from)
        .map_or(&[][..], |(_, to)| *to);
    if allowed.contains(&to) {
        return Ok(());
    }
    let next_steps = match allowed {
        [] => "it is over".to_owned(),
        steps => format!("it goes to {}", listed(steps)),
    };
    Err(format!(
        "careplan-transition: CarePlan.status cannot change from {from} to {to}: from {from}, {next_steps} (or entered-in-error)"
    ))
}

/// The CareTeams a plan names (`CarePlan.careTeam`).
pub fn care_teams(plan: &Value) -> Vec<&str> {
    super::ids_referenced(&plan["careTeam"], "CareTeam")
}

/// The id of the Subscription through which `member` follows
/// `CarePlan/{plan_id}`.
pub fn follower_subscription_id(plan_id: &str, member: &str) -> String {
    super::derived_id("careplan", &format!("CarePlan/{plan_id}\n{member}"))
}

/// The Subscription through which a member of the plan's care team hears of
/// every change of `CarePlan/{plan_id}`.
pub fn follower_subscription(plan_id: &str, member: &Recipient) -> Value {
    let who = member.reference.as_deref().unwrap_or_default();
    recipients::kept_for(
        member,
        format!("CarePlan?_id={plan_id}"),
        format!("Suivi du plan CarePlan/{plan_id}, pour {who}"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn plan(status: &str) -> Value {
        json!({"resourceType": "CarePlan", "status": status, "intent": "plan",
            "careTeam": [{"reference": "CareTeam/circle-1"}, {"reference": "Group/g"}]})
    }

    #[test]
    fn a_plan_lives_its_life() {
        for (from, to) in [
            ("draft", "active"),
            ("active", "on-hold"),
            ("on-hold", "active"),
            ("active", "completed"),
            ("active", "revoked"),
            ("completed", "entered-in-error"),
            ("active", "active"),
        ] {
            assert_eq!(
                check(Some(&plan(from)), Some(&plan(to))),
                Ok(()),
                "{from} → {to}"
            );
        }
        assert_eq!(check(None, Some(&plan("active"))), Ok(()));
        assert_eq!(check(Some(&plan("active")), None), Ok(()));
    }

    #[test]
    fn other_changes_are_refused_naming_the_rule() {
        for (from, to) in [
            ("completed", "active"),
            ("revoked", "draft"),
            ("active", "draft"),
            ("draft", "on-hold"),
        ] {
            let refused = check(Some(&plan(from)), Some(&plan(to))).unwrap_err();
            assert!(refused.starts_with("careplan-transition"), "{refused}");
            assert!(
                refused.contains(&format!("from {from} to {to}")),
                "{refused}"
            );
        }
        assert!(check(None, Some(&plan("completed")))
            .unwrap_err()
            .starts_with("careplan-starts-draft-or-active"));
    }

    #[test]
    fn the_plan_names_its_care_teams() {
        assert_eq!(care_teams(&plan("active")), ["circle-1"]);
        assert!(is_open(&plan("on-hold")) && !is_open(&plan("completed")));
        let a = follower_subscription_id("p1", "Practitioner/gp");
        assert_ne!(a, follower_subscription_id("p1", "Practitioner/nurse"));
        let member = Recipient {
            reference: Some("Practitioner/gp".into()),
            address: "https://cabinet.example/hook".into(),
        };
        let sub = follower_subscription("p1", &member);
        assert_eq!(sub["criteria"], "CarePlan?_id=p1");
        crate::fhir::validate::validate_resource(&sub).unwrap();
    }
}

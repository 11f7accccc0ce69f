//! Hospital stays: which Encounters are stays, which status changes make sense, and
//! what a change of a stay means for the people outside (admission, transfer,
//! discharge). Pure: the write path hands in the previous and the new version.

use serde_json::Value;

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// The v3 ActCode classes of an inpatient-like stay (inpatient, inpatient acute,
/// inpatient non-acute, short stay).
pub const INPATIENT_CLASSES: [&str; 4] = ["IMP", "ACUTE", "NONAC", "SS"];

/// Which Encounters are stays: the inpatient-like ActCode classes, plus the class
/// codes a deployment adds (`PASSERELLE_INPATIENT_CLASSES`, e.g. `HH` for home
/// hospitalisation), which match in any code system.
#[derive(Clone, Debug, Default)]
pub struct StayRules {
    pub extra_classes: Vec<String>,
}

impl StayRules {
    pub fn is_stay(&self, encounter: &Value) -> bool {
        let class = &encounter["class"];
        let Some(code) = class["code"].as_str() else {
            return false;
        };
        let system = class["system"].as_str();
        (INPATIENT_CLASSES.contains(&code) && system.is_none_or(|s| s == ACT_CODE))
            || self.extra_classes.iter().any(|c| c == code)
    }
}

/// R4 `Encounter.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Planned,
    Arrived,
    Triaged,
    InProgress,
    OnLeave,
    Finished,
    Cancelled,
    EnteredInError,
    Unknown,
}

/// Each status with its code.
const CODES: [(Status, &str); 9] = [
    (Status::Planned, "planned"),
    (Status::Arrived, "arrived"),
    (Status::Triaged, "triaged"),
    (Status::InProgress, "in-progress"),
    (Status::OnLeave, "onleave"),
    (Status::Finished, "finished"),
    (Status::Cancelled, "cancelled"),
    (Status::EnteredInError, "entered-in-error"),
    (Status::Unknown, "unknown"),
];

impl Status {
    pub fn of(encounter: &Value) -> Option<Status> {
        super::status_of(&CODES, encounter)
    }

    pub fn code(self) -> &'static str {
        super::code_of(&CODES, self)
    }
}

use Status::*;

/// Before admission.
const BEFORE: &[Status] = &[Planned, Arrived, Triaged];
/// In hospital (on leave included: the bed is kept).
const ADMITTED: &[Status] = &[InProgress, OnLeave];
const ALL_BUT_ERROR: &[Status] = &[
    Planned, Arrived, Triaged, InProgress, OnLeave, Finished, Cancelled, Unknown,
];

/// A status change that is refused: from any of `from` to any of `to`.
#[derive(Debug)]
pub struct Rule {
    /// Named in the OperationOutcome.
    pub id: &'static str,
    pub from: &'static [Status],
    pub to: &'static [Status],
    pub why: &'static str,
}

/// The status changes of a stay that make no sense. Anything else is allowed,
/// and a status kept is never refused.
pub const REFUSED: &[Rule] = &[
    Rule {
        id: "stay-finished-is-final",
        from: &[Finished],
        to: ALL_BUT_ERROR,
        why: "a finished stay cannot change status again, except to entered-in-error; a readmission is a new Encounter",
    },
    Rule {
        id: "stay-cancelled-is-final",
        from: &[Cancelled],
        to: ALL_BUT_ERROR,
        why: "a cancelled stay cannot change status again, except to entered-in-error",
    },
    Rule {
        id: "stay-entered-in-error-is-final",
        from: &[EnteredInError],
        to: ALL_BUT_ERROR,
        why: "an Encounter entered in error cannot come back",
    },
    Rule {
        id: "stay-admitted-cannot-go-back",
        from: ADMITTED,
        to: BEFORE,
        why: "an admitted patient cannot go back to planned, arrived or triaged",
    },
    Rule {
        id: "stay-admitted-cannot-be-cancelled",
        from: ADMITTED,
        to: &[Cancelled],
        why: "a stay that has begun ends as finished (or entered-in-error), not cancelled",
    },
];

/// The rule a status change breaks, if any.
pub fn refused(from: Status, to: Status) -> Option<&'static Rule> {
    if from == to {
        return None;
    }
    REFUSED
        .iter()
        .find(|r| r.from.contains(&from) && r.to.contains(&to))
}

/// What a change of a stay means for the people outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StayEvent {
    /// The stay becomes in-progress for the first time.
    Admission,
    /// The patient moves (`location` or `partOf` changes) while in hospital.
    Transfer,
    /// The stay becomes finished.
    Discharge,
}

/// A refused change of a stay.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
}

/// The events of a write of an Encounter: `previous` is the live version it
/// replaces (none for a creation), `next` the new one (none for a delete, which
/// means nothing outside). A stay recorded already finished is history and no
/// event. Only stays (by the class of the new version) are concerned.
pub fn transition(
    rules: &StayRules,
    previous: Option<&Value>,
    next: Option<&Value>,
) -> Result<Vec<StayEvent>, Refusal> {
    let Some(next) = next.filter(|n| rules.is_stay(n)) else {
        return Ok(Vec::new());
    };
    let Some(to) = Status::of(next) else {
        return Ok(Vec::new());
    };
    let from = previous.and_then(Status::of);
    if let Some(from) = from {
        if let Some(rule) = refused(from, to) {
            return Err(Refusal {
                rule: rule.id,
                message: format!(
                    "{}: Encounter.status cannot change from {} to {}: {}",
                    rule.id,
                    from.code(),
                    to.code(),
                    rule.why
                ),
            });
        }
    }
    let mut events = Vec::new();
    match (from, to) {
        (None, InProgress) => events.push(StayEvent::Admission),
        (Some(f), InProgress) if BEFORE.contains(&f) => events.push(StayEvent::Admission),
        (Some(f), Finished) if f != Finished => events.push(StayEvent::Discharge),
        (Some(f), t) if ADMITTED.contains(&f) && ADMITTED.contains(&t) => {
            let moved = |field: &str| previous.map(|p| &p[field]) != Some(&next[field]);
            if moved("location") || moved("partOf") {
                events.push(StayEvent::Transfer);
            }
        }
        _ => {}
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stay(status: &str) -> Value {
        json!({"resourceType": "Encounter", "status": status,
            "class": {"system": ACT_CODE, "code": "IMP"}})
    }

    fn rules() -> StayRules {
        StayRules::default()
    }

    #[test]
    fn inpatient_like_classes_are_stays() {
        let r = rules();
        for code in INPATIENT_CLASSES {
            assert!(r.is_stay(&json!({"class": {"system": ACT_CODE, "code": code}})));
        }
        assert!(!r.is_stay(&json!({"class": {"system": ACT_CODE, "code": "AMB"}})));
        assert!(!r.is_stay(&json!({"class": {"system": "http://other", "code": "IMP"}})));
        assert!(!r.is_stay(&json!({"status": "in-progress"})));
        let home = StayRules {
            extra_classes: vec!["HH".to_owned()],
        };
        assert!(home.is_stay(&json!({"class": {"system": ACT_CODE, "code": "HH"}})));
    }

    #[test]
    fn each_rule_refuses_what_it_names() {
        for rule in REFUSED {
            for &from in rule.from {
                for &to in rule.to.iter().filter(|&&t| t != from) {
                    assert_eq!(refused(from, to).map(|r| r.id), Some(rule.id));
                }
            }
        }
        // Everything may become entered-in-error, and nothing is refused twice.
        for (from, code) in CODES {
            assert_eq!(Status::of(&json!({"status": code})), Some(from));
            assert_eq!(from.code(), code);
            assert!(refused(from, EnteredInError).is_none());
            assert!(refused(from, from).is_none());
        }
    }

    #[test]
    fn the_refusals_are_named() {
        let e = transition(
            &rules(),
            Some(&stay("finished")),
            Some(&stay("in-progress")),
        )
        .unwrap_err();
        assert_eq!(e.rule, "stay-finished-is-final");
        assert!(e.message.contains("from finished to in-progress"));
        let e = transition(&rules(), Some(&stay("cancelled")), Some(&stay("planned"))).unwrap_err();
        assert_eq!(e.rule, "stay-cancelled-is-final");
        let e =
            transition(&rules(), Some(&stay("in-progress")), Some(&stay("planned"))).unwrap_err();
        assert_eq!(e.rule, "stay-admitted-cannot-go-back");
        let e = transition(&rules(), Some(&stay("onleave")), Some(&stay("cancelled"))).unwrap_err();
        assert_eq!(e.rule, "stay-admitted-cannot-be-cancelled");
        let e = transition(
            &rules(),
            Some(&stay("entered-in-error")),
            Some(&stay("finished")),
        )
        .unwrap_err();
        assert_eq!(e.rule, "stay-entered-in-error-is-final");
    }

    #[test]
    fn admission_is_the_first_in_progress() {
        let t = |p: Option<&str>, n: &str| {
            transition(&rules(), p.map(stay).as_ref(), Some(&stay(n))).unwrap()
        };
        assert_eq!(t(None, "in-progress"), [StayEvent::Admission]);
        for before in ["planned", "arrived", "triaged"] {
            assert_eq!(t(Some(before), "in-progress"), [StayEvent::Admission]);
        }
        // Back from leave, or the same status written again: not an admission.
        assert!(t(Some("onleave"), "in-progress").is_empty());
        assert!(t(Some("in-progress"), "in-progress").is_empty());
        assert!(t(None, "planned").is_empty());
    }

    #[test]
    fn discharge_is_becoming_finished() {
        let t = |p: Option<&str>, n: &str| {
            transition(&rules(), p.map(stay).as_ref(), Some(&stay(n))).unwrap()
        };
        assert_eq!(t(Some("in-progress"), "finished"), [StayEvent::Discharge]);
        assert_eq!(t(Some("onleave"), "finished"), [StayEvent::Discharge]);
        assert_eq!(t(Some("planned"), "finished"), [StayEvent::Discharge]);
        // Recorded after the fact, or finished written again.
        assert!(t(None, "finished").is_empty());
        assert!(t(Some("finished"), "finished").is_empty());
    }

    #[test]
    fn transfer_is_a_move_while_admitted() {
        let mut before = stay("in-progress");
        before["location"] = json!([{"location": {"reference": "Location/cardio"}}]);
        let mut after = stay("in-progress");
        after["location"] = json!([{"location": {"reference": "Location/smr"}}]);
        assert_eq!(
            transition(&rules(), Some(&before), Some(&after)).unwrap(),
            [StayEvent::Transfer]
        );
        assert!(transition(&rules(), Some(&before), Some(&before))
            .unwrap()
            .is_empty());
        let mut moved_up = stay("onleave");
        moved_up["partOf"] = json!({"reference": "Encounter/parent"});
        assert_eq!(
            transition(&rules(), Some(&stay("in-progress")), Some(&moved_up)).unwrap(),
            [StayEvent::Transfer]
        );
        // A planned stay whose ward changes has not moved anyone.
        let mut planned = stay("planned");
        planned["location"] = json!([{"location": {"reference": "Location/smr"}}]);
        assert!(transition(&rules(), Some(&stay("planned")), Some(&planned))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn other_encounters_and_deletes_mean_nothing() {
        let consult = json!({"resourceType": "Encounter", "status": "in-progress",
            "class": {"system": ACT_CODE, "code": "AMB"}});
        assert!(
            transition(&rules(), Some(&stay("finished")), Some(&consult))
                .unwrap()
                .is_empty()
        );
        assert!(transition(&rules(), Some(&stay("in-progress")), None)
            .unwrap()
            .is_empty());
    }
}

//! Referrals and orientations: a `ServiceRequest` (a GP asking the hospital for
//! an opinion or an admission, a hospital asking an SMR, HAD, *Hôpital Local* or
//! coordination platform to take a patient) fulfilled by a `Task` (`basedOn` the
//! request, `owner` the performer). Which status changes of the Task make sense
//! (one table), what the request's status becomes, and how the requester hears of
//! each change. Pure: the write path hands in the versions.

use serde_json::{json, Value};

/// R4 `Task.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Draft,
    Requested,
    Received,
    Accepted,
    Rejected,
    Ready,
    Cancelled,
    InProgress,
    OnHold,
    Failed,
    Completed,
    EnteredInError,
}

use Status::*;

const CODES: [(Status, &str); 12] = [
    (Draft, "draft"),
    (Requested, "requested"),
    (Received, "received"),
    (Accepted, "accepted"),
    (Rejected, "rejected"),
    (Ready, "ready"),
    (Cancelled, "cancelled"),
    (InProgress, "in-progress"),
    (OnHold, "on-hold"),
    (Failed, "failed"),
    (Completed, "completed"),
    (EnteredInError, "entered-in-error"),
];

impl Status {
    pub fn of(task: &Value) -> Option<Status> {
        super::status_of(&CODES, task)
    }

    pub fn code(self) -> &'static str {
        super::code_of(&CODES, self)
    }
}

/// Where a referral may go from one status. Anything else is refused, except
/// `entered-in-error` (a correction) and keeping the status.
pub struct Step {
    pub from: Status,
    pub to: &'static [Status],
}

/// The referral's life: requested → received → accepted | rejected →
/// in-progress → completed, cancelled while not over. An accepted referral may be
/// completed at once: the patient was admitted on it (`Encounter.basedOn`).
pub const STEPS: &[Step] = &[
    Step {
        from: Draft,
        to: &[Requested, Cancelled],
    },
    Step {
        from: Requested,
        to: &[Received, Cancelled],
    },
    Step {
        from: Received,
        to: &[Accepted, Rejected, Cancelled],
    },
    Step {
        from: Accepted,
        to: &[InProgress, Completed, Cancelled],
    },
    Step {
        from: InProgress,
        to: &[Completed, Cancelled],
    },
];

/// The statuses a fulfilment Task may be created in.
pub const STARTS: &[Status] = &[Draft, Requested];

/// A write of a referral's Task that breaks a rule: the rule's name, and whether
/// it is a conflict with the current state (409) or missing data (422).
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: &'static str,
    pub message: String,
    pub conflict: bool,
}

/// The statuses of a referral not over yet.
const OPEN: &[Status] = &[Draft, Requested, Received, Accepted, InProgress];

/// The resource types that answer a request (`basedOn` it): a Communication, or a
/// DiagnosticReport.
pub const ANSWERS: &[&str] = &["Communication", "DiagnosticReport"];

/// The answers a Task carries in its `output`.
fn answers_in(task: &Value) -> Vec<&str> {
    task["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["valueReference"]["reference"].as_str())
        .filter(|r| ANSWERS.iter().any(|t| r.starts_with(&format!("{t}/"))))
        .collect()
}

/// The ServiceRequests an answer (`Communication`, `DiagnosticReport`) answers.
pub fn answered_requests(answer: &Value) -> Vec<&str> {
    super::ids_referenced(&answer["basedOn"], "ServiceRequest")
}

/// The Task once `answer` (`Communication/…`, `DiagnosticReport/…`) answered
/// its request: completed, the answer in its `output`; `None` when it is over.
pub fn answered_task(task: &Value, answer: &str) -> Option<Value> {
    if !OPEN.contains(&Status::of(task)?) {
        return None;
    }
    let mut done = task.clone();
    done["status"] = json!("completed");
    let output = json!({"type": {"text": "Réponse"}, "valueReference": {"reference": answer}});
    match done["output"].as_array_mut() {
        Some(list) => list.push(output),
        None => done["output"] = json!([output]),
    }
    Some(done)
}

/// The ServiceRequest a Task fulfils (its first `basedOn` of that type).
pub fn request_of(task: &Value) -> Option<&str> {
    super::ids_referenced(&task["basedOn"], "ServiceRequest")
        .first()
        .copied()
}

fn listed(statuses: &[Status]) -> String {
    let codes: Vec<&str> = statuses.iter().map(|s| s.code()).collect();
    match codes.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Checks the write of a fulfilment Task: `previous` the live version it
/// replaces, `next` the new one (none for a delete, always allowed).
pub fn check(previous: Option<&Value>, next: Option<&Value>) -> Result<(), Refusal> {
    let Some(next) = next.filter(|t| request_of(t).is_some()) else {
        return Ok(());
    };
    let Some(to) = Status::of(next) else {
        return Ok(()); // An unknown code is the validator's to refuse.
    };
    if to == Rejected && next["statusReason"].is_null() {
        return Err(Refusal {
            rule: "referral-rejection-needs-reason",
            message: "a referral is rejected with a statusReason saying why".to_owned(),
            conflict: false,
        });
    }
    let from = previous
        .filter(|p| request_of(p).is_some())
        .and_then(Status::of);
    let Some(from) = from else {
        return match STARTS.contains(&to) {
            true => Ok(()),
            false => Err(Refusal {
                rule: "referral-starts-requested",
                message: format!(
                    "a referral's Task is created {}, not {}",
                    listed(STARTS),
                    to.code()
                ),
                conflict: true,
            }),
        };
    };
    if from == to || to == EnteredInError {
        return Ok(());
    }
    // Answered (tele-expertise): done with its answer, whatever step it was at.
    if to == Completed && OPEN.contains(&from) && !answers_in(next).is_empty() {
        return Ok(());
    }
    let allowed = STEPS
        .iter()
        .find(|s| s.from == from)
        .map_or(&[][..], |s| s.to);
    if allowed.contains(&to) {
        return Ok(());
    }
    let next_steps = match allowed {
        [] => "it is over".to_owned(),
        steps => format!("it goes to {}", listed(steps)),
    };
    Err(Refusal {
        rule: "referral-transition",
        message: format!(
            "Task.status cannot change from {} to {}: from {}, {next_steps} (or entered-in-error)",
            from.code(),
            to.code(),
            from.code()
        ),
        conflict: true,
    })
}

/// The request once its Task reached `task`'s status: completed with it, revoked
/// when cancelled; `None` when it keeps its status (a rejected referral may go to
/// another performer) or is no longer active.
pub fn followed_request(request: &Value, task: &Value) -> Option<Value> {
    let status = match Status::of(task)? {
        Completed => "completed",
        Cancelled => "revoked",
        _ => return None,
    };
    if request["status"] != "active" {
        return None;
    }
    let mut followed = request.clone();
    followed["status"] = json!(status);
    Some(followed)
}

/// The Tasks a stay admitted on `request` completes: those accepted or in
/// progress (one not yet accepted is left to the receiving team).
pub fn completed_by_admission(task: &Value) -> Option<Value> {
    match Status::of(task)? {
        Accepted | InProgress => {
            let mut done = task.clone();
            done["status"] = json!("completed");
            Some(done)
        }
        _ => None,
    }
}

/// One request as `$turnaround` counts it: when it was asked, when it was
/// answered (first `completed`), and its status now.
pub struct Asked {
    pub asked: chrono::DateTime<chrono::Utc>,
    pub answered: Option<chrono::DateTime<chrono::Utc>>,
    pub status: String,
}

/// `ServiceRequest/$turnaround`: how many requests were answered and how many
/// are still open, and the median and 90th percentile delay from request to
/// answer, in hours (as a `Parameters`).
pub fn turnaround(requests: &[Asked]) -> Value {
    let mut delays: Vec<f64> = requests
        .iter()
        .filter_map(|r| Some((r.answered? - r.asked).num_seconds() as f64 / 3600.0))
        .collect();
    delays.sort_by(f64::total_cmp);
    let open = requests
        .iter()
        .filter(|r| {
            r.answered.is_none() && matches!(r.status.as_str(), "draft" | "active" | "on-hold")
        })
        .count();
    let mut parameters = vec![
        json!({"name": "answered", "valueInteger": delays.len()}),
        json!({"name": "open", "valueInteger": open}),
    ];
    // Nearest rank: the smallest delay with at least `share` of them at or below.
    let rank = |share: f64| {
        let n = (share * delays.len() as f64).ceil() as usize;
        delays[n.clamp(1, delays.len()) - 1]
    };
    if !delays.is_empty() {
        for (name, share) in [("median-delay", 0.5), ("p90-delay", 0.9)] {
            let hours = (rank(share) * 10.0).round() / 10.0;
            parameters.push(json!({"name": name, "valueQuantity": {
                "value": hours, "unit": "h", "system": "http://unitsofmeasure.org", "code": "h"}}));
        }
    }
    json!({"resourceType": "Parameters", "parameter": parameters})
}

/// The ServiceRequests an Encounter was admitted on (`Encounter.basedOn`).
pub fn requests_of_stay(encounter: &Value) -> Vec<&str> {
    super::ids_referenced(&encounter["basedOn"], "ServiceRequest")
}

/// The id of the Subscription through which the requester of
/// `ServiceRequest/{request_id}` hears of its Task.
pub fn requester_subscription_id(request_id: &str) -> String {
    super::derived_id("referral", &format!("ServiceRequest/{request_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(status: &str) -> Value {
        json!({"resourceType": "Task", "status": status, "intent": "order",
            "basedOn": [{"reference": "ServiceRequest/sr1"}],
            "owner": {"reference": "Organization/smr"}})
    }

    #[test]
    fn the_referral_goes_its_way() {
        let path = [
            "requested",
            "received",
            "accepted",
            "in-progress",
            "completed",
        ];
        assert_eq!(check(None, Some(&task("requested"))), Ok(()));
        for pair in path.windows(2) {
            assert_eq!(
                check(Some(&task(pair[0])), Some(&task(pair[1]))),
                Ok(()),
                "{pair:?}"
            );
        }
        // Cancelled while not over; corrected at any time; a status kept.
        for from in ["draft", "requested", "received", "accepted", "in-progress"] {
            assert_eq!(check(Some(&task(from)), Some(&task("cancelled"))), Ok(()));
        }
        assert_eq!(
            check(Some(&task("completed")), Some(&task("entered-in-error"))),
            Ok(())
        );
        assert_eq!(
            check(Some(&task("received")), Some(&task("received"))),
            Ok(())
        );
        // Admitted on it: accepted → completed.
        assert_eq!(
            check(Some(&task("accepted")), Some(&task("completed"))),
            Ok(())
        );
    }

    #[test]
    fn other_changes_are_refused_naming_the_transition() {
        for (from, to) in [
            ("requested", "accepted"),
            ("requested", "completed"),
            ("received", "in-progress"),
            ("received", "completed"),
            ("completed", "in-progress"),
            ("cancelled", "requested"),
            ("in-progress", "on-hold"),
        ] {
            let refused = check(Some(&task(from)), Some(&task(to))).expect_err(to);
            assert_eq!(refused.rule, "referral-transition");
            assert!(refused.conflict);
            assert!(
                refused.message.contains(&format!("from {from} to {to}")),
                "{}",
                refused.message
            );
        }
        let over = check(Some(&task("rejected")), Some(&task("accepted"))).unwrap_err();
        assert!(over.message.contains("it is over"), "{}", over.message);
    }

    #[test]
    fn a_referral_starts_requested_and_a_rejection_says_why() {
        let refused = check(None, Some(&task("accepted"))).unwrap_err();
        assert_eq!(refused.rule, "referral-starts-requested");
        let refused = check(Some(&task("received")), Some(&task("rejected"))).unwrap_err();
        assert_eq!(
            (refused.rule, refused.conflict),
            ("referral-rejection-needs-reason", false)
        );
        let mut with_reason = task("rejected");
        with_reason["statusReason"] = json!({"text": "Pas de lit avant trois semaines"});
        assert_eq!(check(Some(&task("received")), Some(&with_reason)), Ok(()));
    }

    #[test]
    fn other_tasks_are_not_referrals() {
        let mut ack = task("completed");
        ack["basedOn"] = json!([{"reference": "CarePlan/p1"}]);
        assert_eq!(check(None, Some(&ack)), Ok(()));
        assert_eq!(check(Some(&task("completed")), None), Ok(()));
        assert_eq!(request_of(&task("requested")), Some("sr1"));
    }

    #[test]
    fn an_answer_completes_the_task_whatever_its_step() {
        let answer = json!({"resourceType": "Communication", "status": "completed",
            "basedOn": [{"reference": "ServiceRequest/sr1"}]});
        assert_eq!(answered_requests(&answer), ["sr1"]);
        let done = answered_task(&task("received"), "Communication/c1").unwrap();
        assert_eq!(done["status"], "completed");
        assert_eq!(check(Some(&task("received")), Some(&done)), Ok(()));
        assert!(answered_task(&task("completed"), "Communication/c1").is_none());
        assert!(answered_task(&task("rejected"), "Communication/c1").is_none());
        // Without its answer, completing early is still refused.
        assert!(check(Some(&task("received")), Some(&task("completed"))).is_err());
    }

    #[test]
    fn turnaround_counts_and_ranks_the_delays() {
        let at = |h: i64| chrono::DateTime::<chrono::Utc>::UNIX_EPOCH + chrono::Duration::hours(h);
        let asked = |answered: Option<i64>, status: &str| Asked {
            asked: at(0),
            answered: answered.map(at),
            status: status.to_owned(),
        };
        let requests: Vec<Asked> = (1..=10)
            .map(|h| asked(Some(h), "completed"))
            .chain([asked(None, "active"), asked(None, "revoked")])
            .collect();
        let figures = turnaround(&requests);
        let value = |name: &str| {
            figures["parameter"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .cloned()
                .unwrap()
        };
        assert_eq!(value("answered")["valueInteger"], 10);
        assert_eq!(value("open")["valueInteger"], 1);
        assert_eq!(value("median-delay")["valueQuantity"]["value"], 5.0);
        assert_eq!(value("p90-delay")["valueQuantity"]["value"], 9.0);
        let none = turnaround(&[]);
        assert_eq!(none["parameter"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn the_request_follows_its_task() {
        let request = json!({"resourceType": "ServiceRequest", "status": "active"});
        assert_eq!(
            followed_request(&request, &task("completed")).unwrap()["status"],
            "completed"
        );
        assert_eq!(
            followed_request(&request, &task("cancelled")).unwrap()["status"],
            "revoked"
        );
        assert!(followed_request(&request, &task("rejected")).is_none());
        assert!(followed_request(&request, &task("accepted")).is_none());
        let done = json!({"resourceType": "ServiceRequest", "status": "completed"});
        assert!(followed_request(&done, &task("cancelled")).is_none());
    }

    #[test]
    fn an_admission_completes_what_was_accepted() {
        assert_eq!(
            completed_by_admission(&task("accepted")).unwrap()["status"],
            "completed"
        );
        assert!(completed_by_admission(&task("in-progress")).is_some());
        assert!(completed_by_admission(&task("received")).is_none());
        let stay =
            json!({"basedOn": [{"reference": "ServiceRequest/sr1"}, {"reference": "CarePlan/c"}]});
        assert_eq!(requests_of_stay(&stay), ["sr1"]);
        assert!(requester_subscription_id("sr1").starts_with("referral-"));
    }
}

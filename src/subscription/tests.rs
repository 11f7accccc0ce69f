use super::*;
use crate::search::index::{self, IndexRows};
use crate::search::matcher::Subject;
use serde_json::json;
use std::sync::Arc;

/// The standard parameters and the server's topics.
fn definitions() -> Definitions<'static> {
    static TOPICS: std::sync::LazyLock<Vec<Topic>> = std::sync::LazyLock::new(|| {
        topic::load(crate::search::params::test_table(), None).expect("the server's topics")
    });
    Definitions {
        params: crate::search::params::test_table(),
        topics: &TOPICS,
    }
}

fn compile(topic_url: Option<&str>, criteria: &[String]) -> FhirResult<Arc<Compiled>> {
    CompiledCache::default().compile(&definitions(), topic_url, criteria)
}

const DISCHARGE: &str = "https://passerelle.example.fr/fhir/SubscriptionTopic/encounter-discharge";
const TEAM: &str = "https://passerelle.example.fr/fhir/SubscriptionTopic/careteam-membership";

fn dev() -> EndpointPolicy {
    EndpointPolicy {
        allow_insecure: true,
        email: false,
    }
}

fn r4_subscription() -> Value {
    json!({
        "resourceType": "Subscription", "status": "requested", "reason": "GP follow-up",
        "criteria": "Encounter?status=finished&class=IMP",
        "channel": {"type": "rest-hook", "endpoint": "https://cabinet.example.fr/hook",
                    "payload": "application/fhir+json", "header": ["Authorization: Bearer abc"]}
    })
}

fn backport_subscription(filter: &str) -> Value {
    json!({
        "resourceType": "Subscription", "status": "requested", "reason": "DAC",
        "criteria": DISCHARGE,
        "_criteria": {"extension": [{"url": backport("backport-filter-criteria"), "valueString": filter}]},
        "channel": {
            "extension": [{"url": backport("backport-max-count"), "valuePositiveInt": 5},
                          {"url": backport("backport-heartbeat-period"), "valueUnsignedInt": 60}],
            "type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook",
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": backport("backport-payload-content"), "valueCode": "full-resource"}]}
        }
    })
}

#[test]
fn a_requested_r4_subscription_becomes_active_with_a_secret() {
    let mut s = r4_subscription();
    let spec = prepare(&mut s, "s1", &EndpointPolicy::default(), &definitions()).expect("accepted");
    assert!(spec.active && !spec.handshake);
    assert_eq!(s["status"], "active");
    assert_eq!(spec.criteria, vec!["Encounter?status=finished&class=IMP"]);
    assert_eq!(spec.channel.content, Content::FullResource);
    assert_eq!(spec.channel.headers, vec!["Authorization: Bearer abc"]);
    assert_eq!(spec.channel.secret.len(), 64);
    assert!(spec.secret_generated);
    assert!(
        s.get("extension").is_none(),
        "the secret is not stored: {s}"
    );
    let answered = with_secret(s, &spec.channel.secret);
    assert_eq!(
        answered["extension"][0],
        json!({"url": SECRET_EXTENSION, "valueString": spec.channel.secret})
    );
}

#[test]
fn bad_subscriptions_are_refused_with_the_element_at_fault() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "Subscription.criteria",
            json!("Encounter?nope=1"),
            "criteria",
        ),
        ("Subscription.criteria", json!("NotAType?x=1"), "criteria"),
        (
            "Subscription.criteria",
            json!("https://elsewhere.org/SubscriptionTopic/x"),
            "criteria",
        ),
        (
            "Subscription.channel.endpoint",
            json!("http://cabinet.example.fr/hook"),
            "endpoint",
        ),
        ("Subscription.channel.type", json!("sms"), "type"),
        ("Subscription.channel.header", json!(["no colon"]), "header"),
        (
            "Subscription.channel.payload",
            json!("text/plain"),
            "payload",
        ),
    ];
    for (path, value, field) in cases {
        let mut s = r4_subscription();
        match field {
            "criteria" => s["criteria"] = value,
            other => s["channel"][other] = value,
        }
        let err =
            prepare(&mut s, "s1", &EndpointPolicy::default(), &definitions()).expect_err(path);
        let FhirError::Unprocessable(issues) = err else {
            panic!("{path}: not a 422");
        };
        assert_eq!(issues[0].expression.as_deref(), Some(path));
    }
}

#[test]
fn backport_filters_must_be_allowed_by_the_topic() {
    let mut ok = backport_subscription("Encounter?patient=Patient/p1");
    let spec = prepare(&mut ok, "s1", &dev(), &definitions()).expect("accepted");
    assert!(spec.handshake && spec.channel.backport);
    assert_eq!(spec.channel.max_count, 5);
    assert_eq!(spec.channel.heartbeat_secs, Some(60));
    assert_eq!(spec.channel.content, Content::FullResource);
    assert!(prepare(
        &mut backport_subscription("Encounter?reason-code=x"),
        "s2",
        &dev(),
        &definitions()
    )
    .is_err());
    assert!(prepare(
        &mut backport_subscription("Patient?name=x"),
        "s3",
        &dev(),
        &definitions()
    )
    .is_err());
}

fn subject<'a>(rows: &'a IndexRows) -> Subject<'a> {
    Subject {
        res_id: "e1",
        last_updated: Utc::now(),
        rows,
    }
}

fn encounter(status: &str, patient: &str) -> IndexRows {
    index::extract(
        crate::search::params::test_table(),
        "Encounter",
        &json!({"resourceType": "Encounter", "id": "e1", "status": status,
                "class": {"code": "IMP"}, "subject": {"reference": patient}}),
    )
}

#[test]
fn the_discharge_topic_fires_once_when_the_status_becomes_finished() {
    let compiled = compile(
        Some(DISCHARGE),
        &["Encounter?patient=Patient/p1".to_owned()],
    )
    .expect("compiles");
    assert_eq!(
        compiled.keys(),
        vec![("Encounter".to_owned(), "patient>p1".to_owned())]
    );
    let (planned, finished) = (
        encounter("in-progress", "Patient/p1"),
        encounter("finished", "Patient/p1"),
    );
    let verdict = |i, cur: Option<&IndexRows>, prev: Option<&IndexRows>| {
        compiled.evaluate(
            "Encounter",
            i,
            cur.map(subject).as_ref(),
            prev.map(subject).as_ref(),
        )
    };
    assert_eq!(
        verdict(Interaction::Update, Some(&finished), Some(&planned)),
        Verdict::Yes
    );
    assert_eq!(
        verdict(Interaction::Create, Some(&finished), None),
        Verdict::Yes
    );
    // Already finished: an update of a finished stay is not a second discharge.
    assert_eq!(
        verdict(Interaction::Update, Some(&finished), Some(&finished)),
        Verdict::No
    );
    assert_eq!(
        verdict(Interaction::Update, Some(&planned), Some(&planned)),
        Verdict::No
    );
    let other = encounter("finished", "Patient/p2");
    assert_eq!(
        verdict(Interaction::Update, Some(&other), Some(&planned)),
        Verdict::No
    );
}

#[test]
fn the_care_team_topic_fires_when_participants_change() {
    let compiled = compile(Some(TEAM), &[]).expect("compiles");
    assert_eq!(
        compiled.keys(),
        vec![("CareTeam".to_owned(), String::new())]
    );
    let team = |members: &[&str]| {
        let participants: Vec<Value> = members
            .iter()
            .map(|m| json!({"member": {"reference": m}}))
            .collect();
        index::extract(
            crate::search::params::test_table(),
            "CareTeam",
            &json!({"resourceType": "CareTeam", "participant": participants}),
        )
    };
    let (two, three) = (
        team(&["Practitioner/a", "Practitioner/b"]),
        team(&["Practitioner/a", "Practitioner/b", "Practitioner/c"]),
    );
    let eval = |i, cur: Option<&IndexRows>, prev: Option<&IndexRows>| {
        compiled.evaluate(
            "CareTeam",
            i,
            cur.map(subject).as_ref(),
            prev.map(subject).as_ref(),
        )
    };
    assert_eq!(
        eval(Interaction::Update, Some(&three), Some(&two)),
        Verdict::Yes
    );
    assert_eq!(
        eval(Interaction::Update, Some(&two), Some(&two)),
        Verdict::No
    );
    assert_eq!(eval(Interaction::Create, Some(&two), None), Verdict::Yes);
    assert_eq!(eval(Interaction::Delete, None, Some(&two)), Verdict::Yes);
}

#[test]
fn r4_criteria_match_creates_and_updates_and_leave_chains_to_the_database() {
    let compiled = compile(None, &["Encounter?status=finished".to_owned()]).expect("compiles");
    let finished = encounter("finished", "Patient/p1");
    let s = subject(&finished);
    assert_eq!(
        compiled.evaluate("Encounter", Interaction::Update, Some(&s), None),
        Verdict::Yes
    );
    assert_eq!(
        compiled.evaluate("Encounter", Interaction::Delete, None, Some(&s)),
        Verdict::No
    );
    assert_eq!(
        compiled.evaluate("Patient", Interaction::Create, Some(&s), None),
        Verdict::No
    );
    let chained = compile(None, &["Encounter?patient.name=dupont".to_owned()]).expect("compiles");
    assert!(matches!(
        chained.evaluate("Encounter", Interaction::Create, Some(&s), None),
        Verdict::AskDatabase(_)
    ));
}

#[test]
fn criteria_may_hold_urls_in_their_values() {
    let mut s = r4_subscription();
    s["criteria"] = json!("Observation?code=http://loinc.org|29463-7");
    let spec = prepare(&mut s, "s1", &EndpointPolicy::default(), &definitions()).expect("accepted");
    assert_eq!(spec.criteria, ["Observation?code=http://loinc.org|29463-7"]);
}

#[test]
fn an_nde_subscriber_is_sent_the_notification_requests_based_on_it() {
    let mut s = r4_subscription();
    s["criteria"] = json!("CommunicationRequest?event-type=SOR");
    let spec =
        prepare(&mut s, "dac", &EndpointPolicy::default(), &definitions()).expect("accepted");
    assert_eq!(spec.selects, ["CommunicationRequest?event-type=SOR"]);
    assert_eq!(
        spec.criteria,
        ["CommunicationRequest?based-on=Subscription/dac&status=active"]
    );
    // The guide's profile makes any criteria on CommunicationRequest a selection.
    let mut profiled = r4_subscription();
    profiled["criteria"] = json!("CommunicationRequest?subject=Patient/p1");
    profiled["meta"] = json!({"profile": ["https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/nde-subscription"]});
    assert!(selects_declarations(
        &profiled,
        "CommunicationRequest?subject=Patient/p1"
    ));
    // Not a selection: other criteria, and the server's standing subscriptions.
    assert!(!selects_declarations(
        &s,
        "CommunicationRequest?status=active"
    ));
    assert!(!selects_declarations(&s, "Encounter?status=finished"));
    assert!(!selects_declarations(
        &profiled,
        "CommunicationRequest?based-on=Subscription/nde-1&status=active"
    ));
    assert!(selects_declarations(
        &s,
        "CommunicationRequest?event-type:not=ADM"
    ));
}

#[test]
fn a_given_secret_is_taken_out_of_the_resource_and_its_other_extensions_kept() {
    let mut given = r4_subscription();
    let note = json!({"url": "https://example.org/note", "valueString": "cabinet"});
    given["extension"] = json!([
        note.clone(),
        {"url": SECRET_EXTENSION, "valueString": "a-secret-of-my-own-choice"}
    ]);
    let spec =
        prepare(&mut given, "s1", &EndpointPolicy::default(), &definitions()).expect("accepted");
    assert_eq!(spec.channel.secret, "a-secret-of-my-own-choice");
    assert!(!spec.secret_generated);
    assert_eq!(given["extension"], json!([note]));
    // Too short a secret is refused, naming the element.
    let mut short = r4_subscription();
    short["extension"] = json!([{"url": SECRET_EXTENSION, "valueString": "short"}]);
    let refused = prepare(&mut short, "s1", &EndpointPolicy::default(), &definitions());
    assert!(refused.is_err());
}

//! Hospital stays: admissions and discharges declared as NdE events in the write's
//! own transaction, whatever the interaction; transitions that make no sense refused.

use serde_json::{json, Value};

use crate::receiver::Receiver;
use crate::subscriptions::r4_subscription;
use crate::support::{found, json_of, outcome_of, TestServer};

pub fn stay(id: &str, status: &str) -> Value {
    json!({
        "resourceType": "Encounter", "id": id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": "Patient/stay-patient"},
        "serviceProvider": {"reference": "Organization/stay-ch", "display": "CH de Tulle"},
        "period": {"start": "2026-11-16T10:15:00+01:00"}
    })
}

pub fn discharged(id: &str) -> Value {
    let mut s = stay(id, "finished");
    s["period"]["end"] = json!("2026-11-20T19:40:00+01:00");
    s["hospitalization"] = json!({"dischargeDisposition": {"text": "Retour à domicile"}});
    s
}

/// The event declarations of a stay for one event type (the notification
/// requests to its recipients carry the event type too).
async fn declarations(s: &TestServer, encounter: &str, event: &str) -> Vec<Value> {
    found(
        s,
        &format!(
            "CommunicationRequest?encounter=Encounter/{encounter}&event-type={event}\
             &_profile=https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/nde-eventdeclaration"
        ),
    )
    .await
}

pub async fn put(s: &TestServer, resource: &Value, status: u16) -> Value {
    let path = format!(
        "{}/{}",
        resource["resourceType"].as_str().unwrap(),
        resource["id"].as_str().unwrap()
    );
    json_of(s.put_json(&path, resource).await, status).await
}

#[tokio::test]
async fn admission_and_discharge_are_declared_once() {
    let s = TestServer::start().await;
    put(&s, &stay("st1", "planned"), 201).await;
    assert!(declarations(&s, "st1", "ADM").await.is_empty());

    put(&s, &stay("st1", "in-progress"), 200).await;
    let adm = declarations(&s, "st1", "ADM").await;
    assert_eq!(adm.len(), 1, "{adm:?}");
    let adm = &adm[0];
    assert_eq!(adm["status"], "active");
    assert_eq!(adm["subject"]["reference"], "Patient/stay-patient");
    assert_eq!(adm["requester"]["reference"], "Organization/stay-ch");
    assert_eq!(
        adm["meta"]["profile"][0],
        "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/nde-eventdeclaration"
    );
    assert_eq!(
        adm["extension"][1]["valueDateTime"],
        "2026-11-16T10:15:00+01:00"
    );

    // The same stay written again, and a change that is no move: no new event.
    put(&s, &stay("st1", "in-progress"), 200).await;
    let mut noted = stay("st1", "in-progress");
    noted["reasonCode"] = json!([{"text": "Pneumopathie"}]);
    put(&s, &noted, 200).await;
    assert_eq!(declarations(&s, "st1", "ADM").await.len(), 1);
    assert!(declarations(&s, "st1", "SOR").await.is_empty());

    // Discharge by JSON Patch.
    let patch = json!([
        {"op": "replace", "path": "/status", "value": "finished"},
        {"op": "add", "path": "/period/end", "value": "2026-11-20T19:40:00+01:00"},
        {"op": "add", "path": "/hospitalization", "value": {"dischargeDisposition": {"text": "Retour à domicile"}}}
    ]);
    let resp = reqwest::Client::new()
        .patch(s.url("Encounter/st1"))
        .header("content-type", "application/json-patch+json")
        .body(patch.to_string())
        .send()
        .await
        .unwrap();
    json_of(resp, 200).await;
    let sor = declarations(&s, "st1", "SOR").await;
    assert_eq!(sor.len(), 1, "{sor:?}");
    assert_eq!(
        sor[0]["extension"][1]["valueDateTime"],
        "2026-11-20T19:40:00+01:00"
    );
    let text = sor[0]["payload"][0]["contentString"].as_str().unwrap();
    assert!(
        text.contains("mode de sortie : Retour à domicile"),
        "{text}"
    );
    put(&s, &discharged("st1"), 200).await;
    assert_eq!(declarations(&s, "st1", "SOR").await.len(), 1);
    // Both events of the stay, by the stay alone.
    let all = json_of(
        s.get("CommunicationRequest?encounter=Encounter/st1").await,
        200,
    )
    .await;
    assert_eq!(all["total"], 2, "{all}");
}

#[tokio::test]
async fn transitions_that_make_no_sense_are_refused_and_write_nothing() {
    let s = TestServer::start().await;
    put(&s, &stay("st2", "in-progress"), 201).await;
    put(&s, &discharged("st2"), 200).await;
    let before = s.version_count().await;
    let oo = outcome_of(
        s.put_json("Encounter/st2", &stay("st2", "in-progress"))
            .await,
        409,
    )
    .await;
    let message = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(message.contains("stay-finished-is-final"), "{message}");
    assert_eq!(oo["issue"][0]["code"], "conflict");
    let oo = outcome_of(
        s.put_json("Encounter/st2", &stay("st2", "cancelled")).await,
        409,
    )
    .await;
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("stay-finished-is-final"));
    assert_eq!(s.version_count().await, before);
    // entered-in-error stays possible.
    put(&s, &stay("st2", "entered-in-error"), 200).await;

    put(&s, &stay("st3", "in-progress"), 201).await;
    let oo = outcome_of(
        s.put_json("Encounter/st3", &stay("st3", "planned")).await,
        409,
    )
    .await;
    assert!(oo["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .contains("stay-admitted-cannot-go-back"));
}

#[tokio::test]
async fn a_transaction_declares_its_stays_or_writes_nothing() {
    let s = TestServer::start().await;
    put(&s, &stay("st4", "in-progress"), 201).await;
    put(&s, &discharged("st5"), 201).await;
    let entry = |r: Value| {
        let url = format!("Encounter/{}", r["id"].as_str().unwrap());
        json!({"resource": r, "request": {"method": "PUT", "url": url}})
    };
    // A discharge and a new admission together, then a refused entry: nothing.
    let before = s.version_count().await;
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(discharged("st4")), entry(stay("st6", "in-progress")), entry(stay("st5", "in-progress"))
    ]});
    let oo = outcome_of(s.post_json("", &bad).await, 409).await;
    let text = oo.to_string();
    assert!(text.contains("stay-finished-is-final"), "{text}");
    assert!(text.contains("Bundle.entry[2]"), "{text}");
    assert_eq!(s.version_count().await, before);
    assert!(declarations(&s, "st4", "SOR").await.is_empty());

    let good = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry(discharged("st4")), entry(stay("st6", "in-progress"))
    ]});
    json_of(s.post_json("", &good).await, 200).await;
    assert_eq!(declarations(&s, "st4", "SOR").await.len(), 1);
    assert_eq!(declarations(&s, "st6", "ADM").await.len(), 1);
    // A stay recorded already finished is history, not news.
    assert!(declarations(&s, "st5", "SOR").await.is_empty());
}

#[tokio::test]
async fn other_encounters_declare_nothing() {
    let s = TestServer::start().await;
    let mut consult = stay("amb1", "in-progress");
    consult["class"]["code"] = json!("AMB");
    put(&s, &consult, 201).await;
    consult["status"] = json!("finished");
    put(&s, &consult, 200).await;
    // No stay rules either: an outpatient visit may be reopened.
    consult["status"] = json!("in-progress");
    put(&s, &consult, 200).await;
    let all = json_of(s.get("CommunicationRequest").await, 200).await;
    assert_eq!(all["total"], 0, "{all}");
}

/// A regional platform subscribed to discharges gets one notification request
/// per discharge, based on its Subscription, holding the stay; the GP's own
/// notices are not sent to it.
#[tokio::test]
async fn an_nde_subscriber_is_called_back_with_the_discharge() {
    let s = TestServer::start().await;
    let (dac, gp) = (Receiver::start().await, Receiver::start().await);
    reachable_gp(&s, &gp.url()).await;
    let mut subscription = r4_subscription("CommunicationRequest?event-type=SOR", &dac.url());
    subscription["extension"] = json!([{
        "url": "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/subscriber",
        "valueReference": {"reference": "Organization/dac-19"}}]);
    let subscription = json_of(s.post_json("Subscription", &subscription).await, 201).await;
    let sub_id = subscription["id"].as_str().unwrap();
    // What the subscriber wrote stays as written.
    assert_eq!(
        subscription["criteria"],
        "CommunicationRequest?event-type=SOR"
    );
    put(&s, &stay("st7", "in-progress"), 201).await;
    put(&s, &discharged("st7"), 200).await;
    let callback = dac.expect().await.json();
    assert_eq!(callback["resourceType"], "CommunicationRequest");
    assert_eq!(
        callback["basedOn"][0]["reference"],
        format!("Subscription/{sub_id}")
    );
    assert_eq!(callback["encounter"]["reference"], "Encounter/st7");
    assert_eq!(callback["recipient"][0]["reference"], "Organization/dac-19");
    assert_eq!(
        callback["recipient"][0]["extension"][0]["valueUrl"],
        dac.url().as_str()
    );
    assert_eq!(
        callback["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "SOR"
    );
    assert_eq!(
        callback["contained"][1]["period"]["end"],
        "2026-11-20T19:40:00+01:00"
    );
    // The GP heard of both events; the platform of the discharge only, once.
    assert_eq!(
        gp.expect().await.json()["basedOn"],
        gp.expect().await.json()["basedOn"]
    );
    assert!(dac
        .next(std::time::Duration::from_millis(700))
        .await
        .is_none());
    // Searchable as any notice: the platform's, by its subscription.
    let notices = found(
        &s,
        &format!("CommunicationRequest?based-on=Subscription/{sub_id}"),
    )
    .await;
    assert_eq!(notices.len(), 1);
}

/// An emitter (a hospital whose stays live elsewhere) posts its declaration, as
/// the guide's flow 1 has it: the subscribers it concerns are notified.
#[tokio::test]
async fn an_emitters_declaration_reaches_the_subscribers_it_concerns() {
    let s = TestServer::start().await;
    let (dac, other) = (Receiver::start().await, Receiver::start().await);
    let subscribe = |criteria: &str, url: String| {
        let mut sub = r4_subscription(criteria, &url);
        sub["meta"] = json!({"profile": ["https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/nde-subscription"]});
        sub
    };
    for sub in [
        subscribe(
            "CommunicationRequest?event-type=SOR&subject=Patient/langdon",
            dac.url(),
        ),
        subscribe(
            "CommunicationRequest?subject=Patient/someone-else",
            other.url(),
        ),
    ] {
        json_of(s.post_json("Subscription", &sub).await, 201).await;
    }
    let declaration = json!({"resourceType": "CommunicationRequest", "status": "active",
        "meta": {"profile": ["https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/nde-eventdeclaration"]},
        "extension": [
            {"url": "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-type",
             "valueCodeableConcept": {"coding": [{"system": "https://mos.esante.gouv.fr/NOS/TRE_R254-TypeEvenement/FHIR/TRE-R254-TypeEvenement", "code": "SOR"}]}},
            {"url": "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/event-time",
             "valueDateTime": "2026-11-27T18:00:00+01:00"}],
        "subject": {"reference": "Patient/langdon"},
        "payload": [{"contentString": "Sortie de M. Langdon, CH d'Ussel"}]});
    json_of(s.post_json("CommunicationRequest", &declaration).await, 201).await;
    let callback = dac.expect().await.json();
    assert_eq!(
        callback["payload"][0]["contentString"],
        "Sortie de M. Langdon, CH d'Ussel"
    );
    assert_eq!(callback["subject"]["reference"], "Patient/langdon");
    assert!(other
        .next(std::time::Duration::from_millis(700))
        .await
        .is_none());
}

/// The GP of `stay-patient`, reachable at `address` through a PractitionerRole.
pub async fn reachable_gp(s: &TestServer, address: &str) {
    let resources = [
        json!({"resourceType": "Practitioner", "id": "stay-gp",
            "identifier": [{"system": "https://rpps.esante.gouv.fr", "value": "810000000001"}],
            "name": [{"family": "Lenoir", "given": ["Claire"]}]}),
        json!({"resourceType": "Endpoint", "id": "stay-gp-ep", "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
            "payloadType": [{"text": "FHIR"}], "address": address}),
        json!({"resourceType": "PractitionerRole", "id": "stay-gp-role", "active": true,
            "practitioner": {"reference": "Practitioner/stay-gp"},
            "endpoint": [{"reference": "Endpoint/stay-gp-ep"}]}),
        json!({"resourceType": "Patient", "id": "stay-patient",
            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "280017512345610"}],
            "name": [{"family": "Chabrol", "given": ["Henri"]}],
            "generalPractitioner": [{"reference": "Practitioner/stay-gp"}]}),
    ];
    for r in &resources {
        put(s, r, 201).await;
    }
}

#[tokio::test]
async fn the_gp_is_called_back_without_writing_a_subscription() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;

    put(&s, &stay("st8", "in-progress"), 201).await;
    let adm = gp.expect().await.json();
    assert_eq!(adm["resourceType"], "CommunicationRequest");
    assert_eq!(
        adm["meta"]["profile"][0],
        "https://interop.esante.gouv.fr/ig/fhir/nde/StructureDefinition/nde-notificationrequest"
    );
    assert_eq!(
        adm["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "ADM"
    );
    assert_eq!(adm["recipient"][0]["reference"], "Practitioner/stay-gp");
    assert_eq!(adm["encounter"]["reference"], "Encounter/st8");
    assert_eq!(adm["status"], "active");
    let patient = &adm["contained"][0];
    assert_eq!(patient["identifier"][0]["value"], "280017512345610");
    let standing = adm["basedOn"][0]["reference"].as_str().unwrap().to_owned();

    put(&s, &discharged("st8"), 200).await;
    let sor = gp.expect().await.json();
    assert_eq!(
        sor["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "SOR"
    );
    assert_eq!(sor["basedOn"][0]["reference"], standing.as_str());
    let stay_copy = &sor["contained"][1];
    assert_eq!(stay_copy["period"]["end"], "2026-11-20T19:40:00+01:00");
    assert_eq!(
        stay_copy["hospitalization"]["dischargeDisposition"]["text"],
        "Retour à domicile"
    );
    assert!(gp
        .next(std::time::Duration::from_millis(700))
        .await
        .is_none());

    // The standing Subscription is visible and has its $status; there is one.
    let sub = json_of(s.get(&standing).await, 200).await;
    assert_eq!(sub["status"], "active");
    // Made with the patient, and not rewritten by the events: its signing secret
    // is the one the GP's software knows.
    assert_eq!(sub["meta"]["versionId"], "1", "{sub}");
    assert_eq!(sub["channel"]["endpoint"], gp.url());
    json_of(s.get(&format!("{standing}/$status")).await, 200).await;
    let all = json_of(s.get("Subscription").await, 200).await;
    assert_eq!(all["total"], 1, "{all}");
    // The notices of the stay, by the Subscription that brought them.
    let notices = json_of(
        s.get(&format!("CommunicationRequest?based-on={standing}"))
            .await,
        200,
    )
    .await;
    assert_eq!(notices["total"], 2, "{notices}");

    // What the server writes and sends passes $validate: the notices as
    // stored and as called back, the declarations, the standing Subscription
    // (the NdE profiles they claim are not loaded: warnings, their extensions
    // and identifiers checked).
    let declarations = json_of(
        s.get("CommunicationRequest?encounter=Encounter/st8&event-type=ADM,SOR")
            .await,
        200,
    )
    .await;
    // The stay's declarations and notices, ADM and SOR.
    let mut written: Vec<Value> = declarations["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["resource"].clone())
        .collect();
    assert_eq!(written.len(), 4, "two notices, two declarations");
    written.extend([adm, sor, sub]);
    for resource in written {
        let rt = resource["resourceType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let outcome = json_of(
            s.post_json(&format!("{rt}/$validate"), &resource).await,
            200,
        )
        .await;
        let errors: Vec<&Value> = outcome["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["severity"] == "error")
            .collect();
        assert!(errors.is_empty(), "{rt}: {outcome}");
    }
}

#[tokio::test]
async fn an_endpoint_that_cannot_be_called_back_is_refused() {
    let s = TestServer::start().await;
    let endpoint = |address: &str| {
        json!({"resourceType": "Endpoint", "status": "active",
            "connectionType": {"code": "hl7-fhir-rest"},
            "payloadType": [{"text": "FHIR"}], "address": address})
    };
    let before = s.version_count().await;
    // Not a url at all (the datatype's check), then urls the server cannot call.
    for (address, status) in [
        ("not a url", 400),
        ("ftp://cabinet.example/hook", 422),
        ("mailto:dr.lenoir@medecin.mssante.fr", 422),
    ] {
        let oo = outcome_of(s.post_json("Endpoint", &endpoint(address)).await, status).await;
        assert_eq!(oo["issue"][0]["expression"][0], "Endpoint.address", "{oo}");
    }
    assert_eq!(s.version_count().await, before);
    json_of(
        s.post_json("Endpoint", &endpoint("https://cabinet.example/hook"))
            .await,
        201,
    )
    .await;
}

#[tokio::test]
async fn standing_subscriptions_follow_the_patients_gp() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    // Writing the patient with a reachable GP made the standing Subscription.
    let subs = json_of(s.get("Subscription?status=active").await, 200).await;
    assert_eq!(subs["total"], 1, "{subs}");
    let standing = subs["entry"][0]["resource"]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // Another GP, not reachable: the first one's Subscription is off, no new one.
    let mut patient = json_of(s.get("Patient/stay-patient").await, 200).await;
    patient["generalPractitioner"] = json!([{"reference": "Practitioner/elsewhere"}]);
    put(&s, &patient, 200).await;
    let sub = json_of(s.get(&format!("Subscription/{standing}")).await, 200).await;
    assert_eq!(sub["status"], "off");
    assert_eq!(
        json_of(s.get("Subscription?status=active").await, 200).await["total"],
        0
    );
    put(&s, &stay("st9", "in-progress"), 201).await;
    assert!(gp
        .next(std::time::Duration::from_millis(700))
        .await
        .is_none());

    // Back to the first GP: the same Subscription, active again, and notified.
    patient["generalPractitioner"] = json!([{"reference": "Practitioner/stay-gp"}]);
    put(&s, &patient, 200).await;
    let sub = json_of(s.get(&format!("Subscription/{standing}")).await, 200).await;
    assert_eq!(sub["status"], "active");
    put(&s, &discharged("st9"), 200).await;
    let sor = gp.expect().await.json();
    assert_eq!(
        sor["basedOn"][0]["reference"],
        format!("Subscription/{standing}")
    );

    // The patient deleted: the GP's Subscription ends.
    let resp = reqwest::Client::new()
        .delete(s.url("Patient/stay-patient"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let sub = json_of(s.get(&format!("Subscription/{standing}")).await, 200).await;
    assert_eq!(sub["status"], "off");
}

#[tokio::test]
async fn a_discharge_with_its_letter_tells_the_gp_sor_and_doc() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    put(&s, &stay("st10", "in-progress"), 201).await;
    assert_eq!(
        gp.expect().await.json()["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "ADM"
    );
    // A letter filed during the stay is no event: the stay is not over.
    let draft = json!({"resourceType": "DocumentReference", "status": "current",
        "type": {"text": "Compte rendu intermédiaire"},
        "subject": {"reference": "Patient/stay-patient"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "Qm9u"}}],
        "context": {"encounter": [{"reference": "Encounter/st10"}]}});
    json_of(s.post_json("DocumentReference", &draft).await, 201).await;
    assert!(gp
        .next(std::time::Duration::from_millis(700))
        .await
        .is_none());

    let letter = json!({"resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11490-0", "display": "Lettre de sortie"}]},
        "date": "2026-11-20T19:45:00+01:00",
        "subject": {"reference": "Patient/stay-patient"},
        "content": [{"attachment": {"contentType": "application/pdf", "url": "https://ch.example/lettres/st10.pdf"}}],
        "context": {"encounter": [{"reference": "Encounter/st10"}]}});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": discharged("st10"), "request": {"method": "PUT", "url": "Encounter/st10"}},
        {"resource": letter, "request": {"method": "POST", "url": "DocumentReference"}}
    ]});
    json_of(s.post_json("", &bundle).await, 200).await;
    let mut codes = Vec::new();
    for _ in 0..2 {
        let notice = gp.expect().await.json();
        codes.push(
            notice["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    codes.sort();
    assert_eq!(codes, ["DOC", "SOR"]);
    let doc = declarations(&s, "st10", "DOC").await;
    assert_eq!(doc.len(), 1);
    assert!(doc[0]["payload"][0]["contentString"]
        .as_str()
        .unwrap()
        .contains("Lettre de sortie"));
    assert!(gp
        .next(std::time::Duration::from_millis(700))
        .await
        .is_none());
}

/// A letter filed after the discharge by a conditional update that names no id
/// (the hospital's software knows its own identifier of the letter only) is the
/// stay's DOC event all the same, once: sent again unchanged, it is no new event.
#[tokio::test]
async fn a_letter_filed_by_conditional_update_after_the_discharge_is_a_doc_event() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    put(&s, &stay("st11", "in-progress"), 201).await;
    gp.expect().await;
    put(&s, &discharged("st11"), 200).await;
    gp.expect().await;

    let letter = json!({"resourceType": "DocumentReference", "status": "current",
        "identifier": [{"system": "urn:oid:1.2.250.1.999.1", "value": "lettre-st11"}],
        "type": {"coding": [{"system": "http://loinc.org", "code": "11490-0", "display": "Lettre de sortie"}]},
        "subject": {"reference": "Patient/stay-patient"},
        "content": [{"attachment": {"contentType": "application/pdf", "url": "https://ch.example/lettres/st11.pdf"}}],
        "context": {"encounter": [{"reference": "Encounter/st11"}]}});
    let path = "DocumentReference?identifier=urn:oid:1.2.250.1.999.1%7Clettre-st11";
    let filed = json_of(s.put_json(path, &letter).await, 201).await;
    assert!(filed["id"].is_string(), "{filed}");
    let notice = gp.expect().await.json();
    assert_eq!(
        notice["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "DOC"
    );
    assert_eq!(declarations(&s, "st11", "DOC").await.len(), 1);

    json_of(s.put_json(path, &letter).await, 200).await;
    assert!(gp
        .next(std::time::Duration::from_millis(700))
        .await
        .is_none());
    assert_eq!(declarations(&s, "st11", "DOC").await.len(), 1);
}

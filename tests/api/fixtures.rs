//! The project's fixtures (`fixtures/`): each scenario is a transaction Bundle that
//! loads, loads again without change, and answers its users' questions. Also the
//! `passerelle load` command.

use std::path::PathBuf;

use serde_json::Value;

use crate::support::{
    fresh_database_url, json_files, json_of, refs_by_mode, run_passerelle, TestServer,
};

fn fixture_files() -> Vec<PathBuf> {
    json_files(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures"))
}

async fn ids(s: &TestServer, query: &str) -> Vec<String> {
    crate::support::ids_in(&json_of(s.get(query).await, 200).await)
}

#[tokio::test]
async fn scenarios_load_twice_and_answer_their_questions() {
    let s = TestServer::start().await;
    let files = fixture_files();
    assert_eq!(files.len(), 8);
    for pass in 0..2 {
        for file in &files {
            let bundle: Value =
                serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("json");
            let response = json_of(s.post_json("", &bundle).await, 200).await;
            for entry in response["entry"].as_array().expect("entries") {
                let status = entry["response"]["status"].as_str().expect("status");
                let expected = if pass == 0 { "201 Created" } else { "200 OK" };
                assert_eq!(status, expected, "{} pass {pass}", file.display());
            }
        }
    }
    let versions = json_of(s.get("_history?_count=1000").await, 200).await;
    // 48 resources, the admission the orthopaedic stay (in progress) declares and
    // its CareTeam, and the care circles of the five patients with a GP; then 19
    // resources of the three coordination scenarios, the tele-expertise's Task and
    // request completed by the answer, the booked slot, and two more circles.
    assert_eq!(
        versions["entry"].as_array().map(Vec::len),
        Some(79),
        "the second load wrote no version"
    );
    let declared = json_of(
        s.get("CommunicationRequest?encounter=Encounter/fx-ortho-stay&event-type=ADM")
            .await,
        200,
    )
    .await;
    assert_eq!(declared["total"], 1, "{declared}");
    // Who is on Mme Delmas's care team? The eight professionals and her GP.
    let team = json_of(s.get("CareTeam/fx-ortho-careteam").await, 200).await;
    assert_eq!(team["participant"].as_array().map(Vec::len), Some(9));
    assert_eq!(
        ids(&s, "CareTeam?participant=Practitioner/fx-ortho-dietitian").await,
        ["fx-ortho-careteam"]
    );
    assert_eq!(
        ids(
            &s,
            "Patient?_has:CareTeam:patient:participant=Practitioner/fx-ortho-anaesthetist"
        )
        .await,
        ["fx-ortho-patient"]
    );
    // The Friday-evening discharge reaches the GP: a SOR notice addressed to her.
    assert_eq!(
        ids(
            &s,
            "CommunicationRequest?event-type=SOR&recipient=Practitioner/fx-discharge-gp"
        )
        .await,
        ["fx-discharge-notice"]
    );
    assert_eq!(ids(&s, "Encounter?status=finished&date=ge2026-11-20&patient.general-practitioner=Practitioner/fx-discharge-gp").await, ["fx-discharge-stay"]);
    // The EHPAD resident: admitted and discharged, heart failure.
    assert_eq!(
        ids(&s, "Encounter?reason-code=http://snomed.info/sct|84114007").await,
        ["fx-ehpad-stay"]
    );
    assert_eq!(
        ids(
            &s,
            "CommunicationRequest?subject=Patient/fx-ehpad-resident&event-type=ADM,SOR"
        )
        .await,
        ["fx-ehpad-admission-notice", "fx-ehpad-discharge-notice"]
    );
    // Referrals and admission requests still open.
    assert_eq!(
        ids(
            &s,
            "Task?owner=Practitioner/fx-referral-rheumatologist&status=requested"
        )
        .await,
        ["fx-referral-task"]
    );
    assert_eq!(
        ids(
            &s,
            "ServiceRequest?status=active&performer=Organization/fx-smr"
        )
        .await,
        ["fx-smr-admission-request"]
    );
    assert_eq!(
        ids(
            &s,
            "Practitioner?identifier=https://rpps.esante.gouv.fr|10030004013"
        )
        .await,
        ["fx-smr-gp"]
    );
    // The tele-expertise, answered: its Task and its request completed.
    assert_eq!(
        ids(&s, "Task?owner=Organization/fx-te-cardio&status=completed")
            .await
            .len(),
        1
    );
    assert_eq!(
        ids(&s, "ServiceRequest?identifier=https://cabinet-mazeyrie.example.fr/demandes|TE-2026-0412&status=completed").await.len(),
        1
    );
    // The consultation avancée: one slot taken, one still free.
    for (status, count) in [("busy", 1), ("free", 1)] {
        let query = format!("Slot?schedule=Schedule/fx-ca-schedule&status={status}");
        assert_eq!(ids(&s, &query).await.len(), count, "{status}");
    }
    // The PPCS: active, followed by the GP's circle and the hospital–home team.
    assert_eq!(
        ids(&s, "CarePlan?patient=Patient/fx-ppcs-patient&status=active")
            .await
            .len(),
        1
    );
    assert_eq!(
        ids(&s, "CareTeam?participant=Practitioner/fx-ppcs-nurse").await,
        ["fx-ppcs-team"]
    );
}

#[tokio::test]
async fn load_command_straight_into_the_database_is_idempotent() {
    let url = fresh_database_url().await;
    let fixtures = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let run = || run_passerelle(&["load".as_ref(), fixtures.as_os_str()], &url);
    // The eight scenarios and the three steps of each replay (whose last step
    // updates the stay its second step created).
    let text = run();
    assert!(
        text.contains(
            "26 files: 110 created, 8 updated or unchanged, 0 steps already taken, 0 failed"
        ),
        "{text}"
    );
    // The load leaves the planner's statistics current.
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let tables = crate::statistics::analyzed(&client).await;
    for table in ["resource", "resource_version", "search_reference"] {
        assert!(
            tables.get(table).is_some_and(|a| a.is_some()),
            "{table}: {tables:?}"
        );
    }
    let text = run();
    assert!(
        text.contains(
            "26 files: 0 created, 111 updated or unchanged, 6 steps already taken, 0 failed"
        ),
        "{text}"
    );
}

#[tokio::test]
async fn everything_about_a_patient_and_a_stay() {
    let s = TestServer::start().await;
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/friday-discharge.json");
    let bundle: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("json");
    json_of(s.post_json("", &bundle).await, 200).await;
    let record = json_of(s.get("Patient/fx-discharge-patient/$everything").await, 200).await;
    let circle = format!(
        "CareTeam/{}",
        passerelle::coordination::circle::circle_id("fx-discharge-patient")
    );
    assert_eq!(
        refs_by_mode(&record, "match"),
        [
            circle.as_str(),
            "CommunicationRequest/fx-discharge-notice",
            "Encounter/fx-discharge-stay",
            "Patient/fx-discharge-patient",
            // A Task about her is part of her record here (R4 leaves Task out).
            "Task/fx-discharge-followup"
        ]
    );
    let referred = refs_by_mode(&record, "include");
    assert!(
        referred.contains(&"Practitioner/fx-discharge-gp".to_owned()),
        "{referred:?}"
    );
    assert!(
        referred.contains(&"Organization/fx-discharge-ch".to_owned()),
        "{referred:?}"
    );
    let only = json_of(
        s.get("Patient/fx-discharge-patient/$everything?_type=Encounter")
            .await,
        200,
    )
    .await;
    assert_eq!(
        refs_by_mode(&only, "match"),
        ["Encounter/fx-discharge-stay"]
    );
    let page = json_of(
        s.get("Patient/fx-discharge-patient/$everything?_count=2")
            .await,
        200,
    )
    .await;
    assert_eq!(refs_by_mode(&page, "match").len(), 2);
    assert!(page["link"].to_string().contains("next"));
    let stay = json_of(s.get("Encounter/fx-discharge-stay/$everything").await, 200).await;
    assert_eq!(
        refs_by_mode(&stay, "match"),
        [
            "CommunicationRequest/fx-discharge-notice",
            "Encounter/fx-discharge-stay",
            "Task/fx-discharge-followup"
        ]
    );
    let missing = s.get("Patient/nobody/$everything").await;
    assert_eq!(missing.status(), 404);
    // `_since` is an instant, as for `_history`.
    for bad in ["_since=2026-01-01", "_since=yesterday", "_count=many"] {
        let refused = s
            .get(&format!("Patient/fx-discharge-patient/$everything?{bad}"))
            .await;
        assert_eq!(refused.status(), 400, "{bad}");
    }
}

/// The Friday-evening discharge replayed through the public API, step by step,
/// with listeners standing for the GP's software and the hospital's coordination
/// desk: admission → ADM at the GP; discharge with the letter in one transaction
/// → SOR and DOC; the GP acknowledges the SOR; the DOC, unacknowledged, is
/// escalated once to the desk. Replaying the steps changes nothing.
#[tokio::test]
async fn the_friday_discharge_replayed_reaches_the_gp_and_escalates_once() {
    use crate::receiver::Receiver;
    use std::time::Duration;

    let mut options = crate::support::test_options();
    options.rules.acks.escalate_after = Duration::from_secs(2);
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    let (gp, desk) = (Receiver::start().await, Receiver::start().await);
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/replay-friday-discharge");
    let steps = json_files(&dir);
    assert_eq!(steps.len(), 3);
    let step = |n: usize| {
        let bundle: Value =
            serde_json::from_str(&std::fs::read_to_string(&steps[n]).expect("read")).expect("json");
        bundle
    };
    json_of(s.post_json("", &step(0)).await, 200).await;
    // The fixture's endpoints are the practices' own; here, the listeners.
    for (id, receiver) in [("fx-replay-gp-ep", &gp), ("fx-replay-desk-ep", &desk)] {
        let mut endpoint = json_of(s.get(&format!("Endpoint/{id}")).await, 200).await;
        endpoint["address"] = serde_json::json!(receiver.url());
        json_of(s.put_json(&format!("Endpoint/{id}"), &endpoint).await, 200).await;
    }

    json_of(s.post_json("", &step(1)).await, 200).await;
    let code = |n: &Value| {
        n["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    let adm = gp.expect().await.json();
    assert_eq!(code(&adm), "ADM");
    assert_eq!(
        adm["contained"][0]["identifier"][0]["value"],
        "148031927209929"
    );

    json_of(s.post_json("", &step(2)).await, 200).await;
    let (a, b) = (gp.expect().await.json(), gp.expect().await.json());
    let (sor, doc) = if code(&a) == "SOR" { (a, b) } else { (b, a) };
    assert_eq!(
        (code(&sor), code(&doc)),
        ("SOR".to_owned(), "DOC".to_owned())
    );
    assert_eq!(
        sor["contained"][1]["hospitalization"]["dischargeDisposition"]["text"],
        "Retour à domicile"
    );
    // The GP acknowledges the discharge and the admission, not the letter.
    for notice in [&adm, &sor] {
        let task = serde_json::json!({"resourceType": "Task", "status": "completed", "intent": "order",
            "focus": {"reference": format!("CommunicationRequest/{}", notice["id"].as_str().unwrap())},
            "owner": {"reference": "Practitioner/fx-replay-gp"}});
        json_of(s.post_json("Task", &task).await, 201).await;
    }
    let escalation = desk
        .next(Duration::from_secs(10))
        .await
        .expect("the letter's notice escalated")
        .json();
    assert_eq!(
        escalation["focus"]["reference"],
        format!("CommunicationRequest/{}", doc["id"].as_str().unwrap())
    );
    assert_eq!(
        escalation["owner"]["reference"],
        "Organization/fx-replay-ch"
    );

    // Replayed: nothing new for anyone.
    for n in 0..3 {
        json_of(s.post_json("", &step(n)).await, 200).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(gp.next(Duration::from_millis(300)).await.is_none());
    assert!(desk.next(Duration::from_millis(300)).await.is_none());
}

/// `passerelle load` straight into the database applies the deployment's
/// coordination settings: a home-hospitalisation class made a stay is declared.
#[tokio::test]
async fn load_applies_the_deployments_stay_classes() {
    let url = fresh_database_url().await;
    let dir = std::env::temp_dir().join(format!("passerelle-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("had.json");
    let stay = serde_json::json!({"resourceType": "Encounter", "id": "had-1", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HH"},
        "subject": {"reference": "Patient/p1"}});
    std::fs::write(&file, stay.to_string()).expect("write");
    let declared = || async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM resource WHERE res_type = 'CommunicationRequest' AND NOT deleted",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        n
    };
    run_passerelle(&["load".as_ref(), file.as_os_str()], &url);
    assert_eq!(declared().await, 0, "HH is no stay by default");
    std::fs::write(&file, {
        let mut again = stay.clone();
        again["id"] = serde_json::json!("had-2");
        again.to_string()
    })
    .expect("write");
    run_passerelle(
        &[
            "load".as_ref(),
            "--inpatient-classes".as_ref(),
            "HH".as_ref(),
            file.as_os_str(),
        ],
        &url,
    );
    assert_eq!(
        declared().await,
        1,
        "HH made a stay: the admission is declared"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The next `count` notices a receiver gets, by event code.
async fn by_event(
    receiver: &crate::receiver::Receiver,
    count: usize,
) -> std::collections::BTreeMap<String, Value> {
    let mut found = std::collections::BTreeMap::new();
    for _ in 0..count {
        let notice = receiver.expect().await.json();
        let code = notice["extension"][0]["valueCodeableConcept"]["coding"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        found.insert(code, notice);
    }
    found
}

/// The EHPAD heart-failure admission and return replayed through the public API:
/// the resident's GP (the EHPAD's coordinating physician) is told by the server
/// unasked, the EHPAD's infirmary once the EHPAD is in her care circle. Admission
/// → ADM to both; return with the letter → SOR and DOC to both. The EHPAD
/// acknowledges everything with Communications, the GP all but the letter, whose
/// notice alone is escalated to the hospital's coordination desk.
#[tokio::test]
async fn the_ehpad_return_reaches_the_gp_and_the_ehpad() {
    use crate::receiver::Receiver;
    use serde_json::json;
    use std::time::Duration;

    let mut options = crate::support::test_options();
    options.rules.acks.escalate_after = Duration::from_secs(2);
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    let (gp, ehpad, desk) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/replay-ehpad-heart-failure");
    let steps = json_files(&dir);
    assert_eq!(steps.len(), 3);
    let step = |n: usize| -> Value {
        serde_json::from_str(&std::fs::read_to_string(&steps[n]).expect("read")).expect("json")
    };
    json_of(s.post_json("", &step(0)).await, 200).await;
    for (id, receiver) in [
        ("fx-rehpad-coordinator-ep", &gp),
        ("fx-rehpad-ehpad-ep", &ehpad),
        ("fx-rehpad-ch-ep", &desk),
    ] {
        let mut endpoint = json_of(s.get(&format!("Endpoint/{id}")).await, 200).await;
        endpoint["address"] = json!(receiver.url());
        json_of(s.put_json(&format!("Endpoint/{id}"), &endpoint).await, 200).await;
    }
    // The EHPAD's nurse finds the resident's care circle and adds the EHPAD.
    let circles = json_of(
        s.get("CareTeam?identifier=urn:passerelle:care-circle:Patient/fx-rehpad-resident")
            .await,
        200,
    )
    .await;
    assert_eq!(circles["total"], 1, "{circles}");
    let mut circle = circles["entry"][0]["resource"].clone();
    circle["participant"]
        .as_array_mut()
        .expect("the GP is in it")
        .push(
            json!({"member": {"reference": "Organization/fx-rehpad-ehpad"},
            "role": [{"text": "EHPAD de résidence"}], "period": {"start": "2024-05-02"}}),
        );
    let path = format!("CareTeam/{}", circle["id"].as_str().expect("id"));
    json_of(s.put_json(&path, &circle).await, 200).await;

    json_of(s.post_json("", &step(1)).await, 200).await;
    let (gp_adm, ehpad_adm) = (by_event(&gp, 1).await, by_event(&ehpad, 1).await);
    assert_eq!(
        gp_adm["ADM"]["recipient"][0]["reference"],
        "Practitioner/fx-rehpad-coordinator"
    );
    assert_eq!(
        ehpad_adm["ADM"]["recipient"][0]["reference"],
        "Organization/fx-rehpad-ehpad"
    );
    assert_eq!(
        ehpad_adm["ADM"]["contained"][0]["identifier"][0]["value"],
        "230021925004507"
    );

    json_of(s.post_json("", &step(2)).await, 200).await;
    let (gp_back, ehpad_back) = (by_event(&gp, 2).await, by_event(&ehpad, 2).await);
    for back in [&gp_back, &ehpad_back] {
        assert_eq!(back.keys().collect::<Vec<_>>(), ["DOC", "SOR"]);
        let stay = &back["SOR"]["contained"][1];
        assert_eq!(
            stay["hospitalization"]["destination"]["reference"],
            "Organization/fx-rehpad-ehpad"
        );
        assert_eq!(
            stay["hospitalization"]["dischargeDisposition"]["text"],
            "Retour en EHPAD"
        );
    }
    // The EHPAD acknowledges all three; the GP the admission and the return.
    let id = |n: &Value| format!("CommunicationRequest/{}", n["id"].as_str().expect("id"));
    for notice in [&ehpad_adm["ADM"], &ehpad_back["SOR"], &ehpad_back["DOC"]] {
        let read = json!({"resourceType": "Communication", "status": "completed",
            "basedOn": [{"reference": id(notice)}], "sender": {"reference": "Organization/fx-rehpad-ehpad"}});
        json_of(s.post_json("Communication", &read).await, 201).await;
    }
    for notice in [&gp_adm["ADM"], &gp_back["SOR"]] {
        let task = json!({"resourceType": "Task", "status": "completed", "intent": "order",
            "focus": {"reference": id(notice)}, "owner": {"reference": "Practitioner/fx-rehpad-coordinator"}});
        json_of(s.post_json("Task", &task).await, 201).await;
    }
    let escalation = desk
        .next(Duration::from_secs(10))
        .await
        .expect("the letter's notice to the GP escalated")
        .json();
    assert_eq!(escalation["focus"]["reference"], id(&gp_back["DOC"]));
    assert_eq!(
        escalation["owner"]["reference"],
        "Organization/fx-rehpad-ch"
    );
    assert_eq!(
        ids(
            &s,
            "CommunicationRequest?recipient=Organization/fx-rehpad-ehpad&status=completed"
        )
        .await
        .len(),
        3
    );
    assert_eq!(
        ids(
            &s,
            "CarePlan?patient=Patient/fx-rehpad-resident&status=active&encounter.identifier=https://ch-ussel.example.fr/sejours|SEJ-2026-088412"
        )
        .await
        .len(),
        1
    );

    // Replayed: nothing new for anyone.
    for n in 0..3 {
        json_of(s.post_json("", &step(n)).await, 200).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for receiver in [&gp, &ehpad, &desk] {
        assert!(receiver.next(Duration::from_millis(300)).await.is_none());
    }
}

/// The steps of a replay in `fixtures/`, its Endpoints pointed at the test's
/// listeners (by Endpoint id).
fn replay_steps(dir: &str, addresses: &[(&str, String)]) -> Vec<Value> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(dir);
    json_files(&dir)
        .iter()
        .map(|file| {
            let mut step: Value =
                serde_json::from_str(&std::fs::read_to_string(file).expect("read")).expect("json");
            for entry in step["entry"].as_array_mut().expect("entries") {
                let resource = &mut entry["resource"];
                let id = resource["id"].as_str().unwrap_or_default().to_owned();
                if let Some((_, address)) = addresses.iter().find(|(of, _)| *of == id) {
                    resource["address"] = Value::from(address.as_str());
                }
            }
            step
        })
        .collect()
}

/// An SMR admission request refused by a first SMR and taken by a second, replayed
/// step by step through the public API: the hospital's discharge desk (the
/// requester) hears of every step of both Tasks, in order; the admission at the
/// second SMR completes its Task and the request and tells the patient's GP.
/// Replayed again, every step written against an older version is refused with
/// 412 and nothing more is written or sent.
#[tokio::test]
async fn the_smr_request_refused_then_taken_tells_the_desk_each_step() {
    use crate::receiver::Receiver;
    use std::time::Duration;

    let s = TestServer::start().await;
    let (desk, gp) = (Receiver::start().await, Receiver::start().await);
    let steps = replay_steps(
        "replay-smr-rejected-then-accepted",
        &[("fx-rsmr-ch-ep", desk.url()), ("fx-rsmr-gp-ep", gp.url())],
    );
    assert_eq!(steps.len(), 8);
    let step = |n: usize| &steps[n];
    for n in 0..8 {
        json_of(s.post_json("", step(n)).await, 200).await;
    }
    let mut heard = Vec::new();
    for _ in 0..7 {
        let Some(task) = desk.next(Duration::from_secs(10)).await else {
            panic!("the desk heard only {heard:?}");
        };
        let task = task.json();
        assert_eq!(task["resourceType"], "Task", "{task}");
        heard.push(format!(
            "{} {}",
            task["identifier"][0]["value"].as_str().unwrap_or_default(),
            task["status"].as_str().unwrap_or_default()
        ));
    }
    assert_eq!(
        heard,
        [
            "SMR-2026-0311-A requested",
            "SMR-2026-0311-A received",
            "SMR-2026-0311-A rejected",
            "SMR-2026-0311-B requested",
            "SMR-2026-0311-B received",
            "SMR-2026-0311-B accepted",
            "SMR-2026-0311-B completed",
        ]
    );
    let admission = gp.expect().await.json();
    assert_eq!(
        admission["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "ADM"
    );
    let request = json_of(
        s.get("ServiceRequest?identifier=https://ch-brive.example.fr/demandes|SMR-2026-0311")
            .await,
        200,
    )
    .await["entry"][0]["resource"]
        .clone();
    assert_eq!(request["status"], "completed");
    assert_eq!(
        request["performer"][0]["reference"],
        "Organization/fx-rsmr-smr-b"
    );
    // The desk's Subscription ends a day after the request was fulfilled.
    let sub_id = passerelle::coordination::referral::requester_subscription_id(
        request["id"].as_str().expect("id"),
    );
    let sub = json_of(s.get(&format!("Subscription/{sub_id}")).await, 200).await;
    assert!(sub["end"].is_string(), "{sub}");
    let tasks = json_of(
        s.get(&format!(
            "Task?based-on=ServiceRequest/{}&_sort=owner",
            request["id"].as_str().expect("id")
        ))
        .await,
        200,
    )
    .await;
    let outcome: Vec<(&str, &str)> = tasks["entry"]
        .as_array()
        .expect("tasks")
        .iter()
        .map(|e| {
            let task = &e["resource"];
            (
                task["owner"]["reference"].as_str().unwrap_or_default(),
                task["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        outcome,
        [
            ("Organization/fx-rsmr-smr-a", "rejected"),
            ("Organization/fx-rsmr-smr-b", "completed")
        ]
    );

    // Replayed: the steps that move a Task or the request on find a later version.
    for n in 0..8 {
        let status = s.post_json("", step(n)).await.status();
        let expected = if (2..=6).contains(&n) { 412 } else { 200 };
        assert_eq!(status, expected, "step {}", n + 1);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    for receiver in [&desk, &gp] {
        assert!(receiver.next(Duration::from_millis(300)).await.is_none());
    }
}

/// A *consultation avancée* booked by the GP's practice, then cancelled, replayed
/// step by step: the GP hears of both, the slot is busy, then free again and
/// another patient takes it. Replayed again, the cancellation finds a later
/// version (412) and nothing more is written or sent.
#[tokio::test]
async fn the_consultation_booked_then_cancelled_frees_its_slot() {
    use crate::receiver::Receiver;
    use serde_json::json;
    use std::time::Duration;

    const SLOT: &str =
        "Slot?identifier=https://ch-ussel.example.fr/creneaux|CA-CARDIO-20261210-1400";
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    let steps = replay_steps(
        "replay-consultation-avancee-cancelled",
        &[("fx-rca-gp-ep", gp.url())],
    );
    assert_eq!(steps.len(), 4);
    let slot = || async { json_of(s.get(SLOT).await, 200).await["entry"][0]["resource"].clone() };
    for step in &steps[..3] {
        json_of(s.post_json("", step).await, 200).await;
    }
    assert_eq!(slot().await["status"], "busy");
    let booked = gp.expect().await.json();
    assert_eq!(
        (booked["resourceType"].as_str(), booked["status"].as_str()),
        (Some("Appointment"), Some("booked"))
    );
    json_of(s.post_json("", &steps[3]).await, 200).await;
    assert_eq!(gp.expect().await.json()["status"], "cancelled");
    assert_eq!(slot().await["status"], "free");

    // Replayed: the booking is found by its identifier, the cancellation is stale.
    let mut replayed = Vec::new();
    for step in &steps {
        replayed.push(s.post_json("", step).await.status().as_u16());
    }
    assert_eq!(replayed, [200, 200, 200, 412]);
    // The freed slot is another patient's to take.
    let slot_id = slot().await["id"].as_str().expect("id").to_owned();
    json_of(
        s.put_json(
            "Patient/fx-rca-other",
            &json!({"resourceType": "Patient", "id": "fx-rca-other"}),
        )
        .await,
        201,
    )
    .await;
    let other = json!({"resourceType": "Appointment", "status": "booked",
        "slot": [{"reference": format!("Slot/{slot_id}")}],
        "participant": [{"actor": {"reference": "Patient/fx-rca-other"}, "status": "accepted"}]});
    json_of(s.post_json("Appointment", &other).await, 201).await;
    assert_eq!(slot().await["status"], "busy");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(gp.next(Duration::from_millis(300)).await.is_none());
}

//! Transaction and batch Bundles.

use serde_json::{json, Value};

use crate::support::{json_of, outcome_of, TestServer};

const INS: &str = "urn:oid:1.2.250.1.213.1.4.10";

async fn post_bundle(s: &TestServer, bundle: &Value) -> reqwest::Response {
    s.post_json("", bundle).await
}

/// Posts a transaction Bundle of `entries`.
async fn post_transaction(s: &TestServer, entries: Vec<Value>) -> reqwest::Response {
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    post_bundle(s, &bundle).await
}

/// A discharge: the patient (found by INS, or created), the stay that ends, the GP
/// in a care team, in one transaction that refers to its own entries.
fn discharge(nir: &str) -> Value {
    json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"fullUrl":"urn:uuid:8d3c5e1a-0000-4000-8000-000000000001",
         "resource":{"resourceType":"Patient","identifier":[{"system":INS,"value":nir}],"name":[{"family":"Roche"}]},
         "request":{"method":"POST","url":"Patient","ifNoneExist":format!("identifier={INS}|{nir}")}},
        {"fullUrl":"urn:uuid:8d3c5e1a-0000-4000-8000-000000000002",
         "resource":{"resourceType":"Encounter","status":"finished","class":{"code":"IMP"},
            "subject":{"reference":"urn:uuid:8d3c5e1a-0000-4000-8000-000000000001"},
            "period":{"start":"2026-11-16","end":"2026-11-20"}},
         "request":{"method":"POST","url":"Encounter"}},
        {"resource":{"resourceType":"CareTeam","id":"ct-roche","status":"active",
            "subject":{"reference":"urn:uuid:8d3c5e1a-0000-4000-8000-000000000001"},
            "encounter":{"reference":"urn:uuid:8d3c5e1a-0000-4000-8000-000000000002"},
            "participant":[{"member":{"reference":"Practitioner/dr-martin"}}]},
         "request":{"method":"PUT","url":"CareTeam/ct-roche"}},
        {"request":{"method":"GET","url":"CareTeam/ct-roche"}}
    ]})
}

#[tokio::test]
async fn transaction_resolves_its_own_references() {
    let s = TestServer::start().await;
    let response = json_of(post_bundle(&s, &discharge("1850599999999")).await, 200).await;
    assert_eq!(response["type"], "transaction-response");
    let entries = response["entry"].as_array().expect("entries");
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    let patient = entries[0]["response"]["location"]
        .as_str()
        .expect("location")
        .to_owned();
    let encounter = entries[1]["response"]["location"]
        .as_str()
        .expect("location")
        .to_owned();
    let local = |loc: &str| loc.split("/_history").next().unwrap_or("").to_owned();
    // The GET entry runs last and sees the care team with rewritten references.
    let care_team = &entries[3]["resource"];
    assert_eq!(care_team["subject"]["reference"], local(&patient));
    assert_eq!(care_team["encounter"]["reference"], local(&encounter));
    let stay = json_of(s.get(&local(&encounter)).await, 200).await;
    assert_eq!(stay["subject"]["reference"], local(&patient));
    // Sent again: the patient is found by INS (ifNoneExist), not created twice.
    let again = json_of(post_bundle(&s, &discharge("1850599999999")).await, 200).await;
    assert_eq!(again["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(again["entry"][0]["response"]["location"], patient.as_str());
    let found = json_of(
        s.get(&format!("Patient?identifier={INS}|1850599999999"))
            .await,
        200,
    )
    .await;
    assert_eq!(found["total"], 1);
}

/// Entries refer to a conditional update by its fullUrl: the reference becomes
/// its match, or the resource it creates (written before it in the spec's order,
/// POST before PUT).
#[tokio::test]
async fn references_to_a_conditional_update_resolve_to_its_target() {
    let s = TestServer::start().await;
    let bundle = |value: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:9b1f0c7e-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Patient", "active": true,
                "identifier": [{"system": INS, "value": value}]},
             "request": {"method": "PUT", "url": format!("Patient?identifier={INS}|{value}")}},
            {"resource": {"resourceType": "Observation", "status": "final",
                "code": {"text": "Poids"},
                "subject": {"reference": "urn:uuid:9b1f0c7e-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "Observation"}}
        ]})
    };
    let subject_of = |response: &Value| {
        let location = response["entry"][1]["response"]["location"]
            .as_str()
            .unwrap();
        location.split("/_history").next().unwrap().to_owned()
    };
    // No match: the reference is the Patient it creates.
    let created = json_of(post_bundle(&s, &bundle("1850577777777")).await, 200).await;
    let patient = created["entry"][0]["response"]["location"]
        .as_str()
        .unwrap();
    let patient = patient.split("/_history").next().unwrap().to_owned();
    let observation = json_of(s.get(&subject_of(&created)).await, 200).await;
    assert_eq!(observation["subject"]["reference"], patient.as_str());
    // A match: the reference is the matching Patient.
    let updated = json_of(post_bundle(&s, &bundle("1850577777777")).await, 200).await;
    let observation = json_of(s.get(&subject_of(&updated)).await, 200).await;
    assert_eq!(observation["subject"]["reference"], patient.as_str());
}

#[tokio::test]
async fn a_failing_entry_rolls_everything_back() {
    let s = TestServer::start().await;
    let mut bundle = discharge("1850588888888");
    // The last write entry is invalid: nothing of the Bundle may remain.
    bundle["entry"][2]["resource"]["status"] = json!("not-a-status-but-a-valid-code");
    bundle["entry"][2]["resource"]["bogus"] = json!(true);
    let oo = outcome_of(post_bundle(&s, &bundle).await, 400).await;
    assert!(oo.to_string().contains("Bundle.entry[2]"), "{oo}");
    assert_eq!(s.version_count().await, 0);
    // A conditional reference that matches nothing: 412, nothing written.
    let dangling = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"resource":{"resourceType":"Encounter","status":"planned","class":{"code":"AMB"},
            "subject":{"reference":format!("Patient?identifier={INS}|0000000000000")}},
         "request":{"method":"POST","url":"Encounter"}}]});
    outcome_of(post_bundle(&s, &dangling).await, 412).await;
    // A reference with criteria that name no type: refused, not stored as written.
    let mut unknown = dangling.clone();
    unknown["entry"][0]["resource"]["subject"]["reference"] = json!("Nope?x=1");
    outcome_of(post_bundle(&s, &unknown).await, 400).await;
    // If-Match on an entry.
    s.put_json("Patient/p1", &json!({"resourceType":"Patient","id":"p1"}))
        .await;
    let stale = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"resource":{"resourceType":"Patient","id":"p2"},"request":{"method":"PUT","url":"Patient/p2"}},
        {"resource":{"resourceType":"Patient","id":"p1","active":true},
         "request":{"method":"PUT","url":"Patient/p1","ifMatch":"W/\"5\""}}]});
    outcome_of(post_bundle(&s, &stale).await, 412).await;
    outcome_of(s.get("Patient/p2").await, 404).await;
    // Not a transaction or batch.
    let collection = json!({"resourceType":"Bundle","type":"collection"});
    outcome_of(post_bundle(&s, &collection).await, 400).await;
}

#[tokio::test]
async fn transaction_order_and_conditional_references() {
    let s = TestServer::start().await;
    s.put_json("Patient/old", &json!({"resourceType":"Patient","id":"old"}))
        .await;
    s.put_json(
        "Patient/gp-patient",
        &json!({"resourceType":"Patient","id":"gp-patient",
        "identifier":[{"system":INS,"value":"2790199999999"}]}),
    )
    .await;
    // DELETE runs before POST and PUT whatever their place in the Bundle.
    let bundle = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"resource":{"resourceType":"Flag","status":"active","code":{"text":"sortie"},
            "subject":{"reference":format!("Patient?identifier={INS}|2790199999999")}},
         "request":{"method":"POST","url":"Flag"}},
        {"request":{"method":"DELETE","url":"Patient/old"}}]});
    let response = json_of(post_bundle(&s, &bundle).await, 200).await;
    assert_eq!(response["entry"][1]["response"]["status"], "204 No Content");
    let flag_location = response["entry"][0]["response"]["location"]
        .as_str()
        .expect("location");
    let flag = json_of(
        s.get(flag_location.split("/_history").next().unwrap_or(""))
            .await,
        200,
    )
    .await;
    assert_eq!(flag["subject"]["reference"], "Patient/gp-patient");
    outcome_of(s.get("Patient/old").await, 410).await;

    // A conditional reference whose criteria hold a URL, to the conditional create
    // of the same Bundle (no fullUrl needed), then to what that create left.
    let finess = "https://finess.esante.gouv.fr|190000042";
    let bundle = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"resource":{"resourceType":"Patient","active":true,
            "managingOrganization":{"reference":format!("Organization?identifier={finess}")}},
         "request":{"method":"POST","url":"Patient"}},
        {"resource":{"resourceType":"Organization","name":"CH de Brive",
            "identifier":[{"system":"https://finess.esante.gouv.fr","value":"190000042"}]},
         "request":{"method":"POST","url":"Organization","ifNoneExist":format!("identifier={finess}")}}]});
    let mut managers = Vec::new();
    for _ in 0..2 {
        let response = json_of(post_bundle(&s, &bundle).await, 200).await;
        let location = |n: usize| {
            let location = response["entry"][n]["response"]["location"]
                .as_str()
                .expect("location");
            location.split("/_history").next().unwrap_or("").to_owned()
        };
        let patient = json_of(s.get(&location(0)).await, 200).await;
        assert_eq!(
            patient["managingOrganization"]["reference"],
            location(1).as_str()
        );
        managers.push(location(1));
    }
    assert_eq!(managers[0], managers[1]);
}

#[tokio::test]
async fn batch_entries_stand_alone() {
    let s = TestServer::start().await;
    let bundle = json!({"resourceType":"Bundle","type":"batch","entry":[
        {"resource":{"resourceType":"Patient","id":"b1"},"request":{"method":"PUT","url":"Patient/b1"}},
        {"resource":{"resourceType":"Patient","id":"b2"},"request":{"method":"PUT","url":"Patient/other"}},
        {"request":{"method":"GET","url":"Patient/b1"}},
        {"request":{"method":"GET","url":"Patient/missing"}},
        // Entries are checked one by one: an invalid one fails alone.
        {"resource":{"resourceType":"Patient","birthDate":"2024-02-30"},"request":{"method":"POST","url":"Patient"}},
        {"resource":{"resourceType":"Patient"}},
        {"resource":{"resourceType":"Patient","id":"b3"},"request":{"method":"PUT","url":"Patient/b3"}}]});
    let response = json_of(post_bundle(&s, &bundle).await, 200).await;
    assert_eq!(response["type"], "batch-response");
    let status = |i: usize| {
        response["entry"][i]["response"]["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(status(0), "201 Created");
    assert_eq!(status(1), "400");
    assert_eq!(
        response["entry"][1]["response"]["outcome"]["resourceType"],
        "OperationOutcome"
    );
    assert_eq!(status(2), "200 OK");
    assert_eq!(status(3), "404");
    assert_eq!(status(4), "400");
    let invalid = response["entry"][4]["response"]["outcome"].to_string();
    assert!(
        invalid.contains("Bundle.entry[4].resource.birthDate"),
        "{invalid}"
    );
    assert_eq!(status(5), "400");
    assert_eq!(status(6), "201 Created");
    json_of(s.get("Patient/b1").await, 200).await;
    json_of(s.get("Patient/b3").await, 200).await;
}

#[tokio::test]
async fn plain_creates_written_together_are_indexed_like_any() {
    let s = TestServer::start().await;
    let patient = |n: usize| {
        json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-00000000000{n}"),
               "resource": {"resourceType": "Patient",
                            "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": format!("27405{n}")}],
                            "name": [{"family": format!("Durand{n}")}]},
               "request": {"method": "POST", "url": "Patient"}})
    };
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        patient(1), patient(2),
        {"resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "IMP"},
                      "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-000000000001"}},
         "request": {"method": "POST", "url": "Encounter"}},
        // Conditional: written on its own, after the plain creates it may match.
        {"resource": {"resourceType": "Patient",
                      "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "274052"}]},
         "request": {"method": "POST", "url": "Patient",
                     "ifNoneExist": "identifier=urn:oid:1.2.250.1.213.1.4.10|274052"}},
        patient(3),
    ]});
    let response = json_of(s.post_json("", &bundle).await, 200).await;
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .filter_map(|e| e["response"]["status"].as_str())
        .collect();
    assert_eq!(
        statuses,
        vec![
            "201 Created",
            "201 Created",
            "201 Created",
            "200 OK",
            "201 Created"
        ]
    );
    let location = |i: usize| {
        response["entry"][i]["response"]["location"]
            .as_str()
            .expect("location")
            .split("/_history")
            .next()
            .expect("url")
            .to_owned()
    };
    // The conditional create found the Patient written in the same transaction.
    assert_eq!(location(3), location(1));
    for n in 1..=3 {
        let found = json_of(
            s.get(&format!(
                "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|27405{n}"
            ))
            .await,
            200,
        )
        .await;
        assert_eq!(found["total"], 1, "patient {n}");
    }
    let encounters = json_of(
        s.get(&format!("Encounter?subject={}", location(0))).await,
        200,
    )
    .await;
    assert_eq!(encounters["total"], 1);
    let e = json_of(s.get(&location(2)).await, 200).await;
    assert_eq!(e["subject"]["reference"], location(0));
    assert_eq!(e["meta"]["versionId"], "1");
}

/// Updates and deletes are written together too (500 changes per statement):
/// each keeps its own answer, its If-Match and its no-op, and the history of
/// each resource moves by one version.
#[tokio::test]
async fn updates_and_deletes_written_together() {
    let s = TestServer::start().await;
    let patient = |i: usize, active: bool| {
        json!({"resourceType": "Patient", "id": format!("w{i}"), "active": active,
               "identifier": [{"system": INS, "value": format!("2740{i:06}")}]})
    };
    let put = |i: usize, active: bool| {
        json!({"resource": patient(i, active),
               "request": {"method": "PUT", "url": format!("Patient/w{i}")}})
    };
    let first: Vec<Value> = (0..700).map(|i| put(i, false)).collect();
    let created = json_of(post_transaction(&s, first).await, 200).await;
    assert_eq!(created["entry"][699]["response"]["status"], "201 Created");
    // 600 updates (one of them the same resource again: no new version), 100
    // deletes, and one stale If-Match in the second statement's share.
    let mut entries: Vec<Value> = (0..600).map(|i| put(i, i != 7)).collect();
    entries.extend(
        (600..700)
            .map(|i| json!({"request": {"method": "DELETE", "url": format!("Patient/w{i}")}})),
    );
    let mut stale = entries.clone();
    stale[550]["request"]["ifMatch"] = json!("W/\"2\"");
    let oo = outcome_of(post_transaction(&s, stale).await, 412).await;
    assert!(oo.to_string().contains("Bundle.entry[550]"), "{oo}");
    assert_eq!(
        s.version_count().await,
        700,
        "nothing of the refused Bundle stays"
    );
    entries[3]["request"]["ifMatch"] = json!("W/\"1\"");
    let response = json_of(post_transaction(&s, entries).await, 200).await;
    let answer = |i: usize| response["entry"][i]["response"].clone();
    assert_eq!(answer(0)["status"], "200 OK");
    assert_eq!(answer(0)["etag"], "W/\"2\"");
    assert_eq!(
        answer(7)["etag"],
        "W/\"1\"",
        "an unchanged resource keeps its version"
    );
    assert_eq!(answer(599)["location"], "Patient/w599/_history/2");
    assert_eq!(answer(600)["status"], "204 No Content");
    assert_eq!(answer(699)["etag"], "W/\"2\"");
    assert_eq!(s.version_count().await, 700 + 599 + 100);
    outcome_of(s.get("Patient/w650").await, 410).await;
    let updated = json_of(s.get("Patient/w599").await, 200).await;
    assert_eq!(updated["active"], true);
    // Indexed like any update: the search sees the new versions only.
    let active = json_of(s.get("Patient?active=true&_summary=count").await, 200).await;
    assert_eq!(active["total"], 599);
    // Two entries for one resource, by id or by criteria, in either order:
    // refused, as R4 says.
    let by_criteria = json!({"resource": patient(1, false),
        "request": {"method": "PUT", "url": format!("Patient?identifier={INS}|2740000001")}});
    let delete = json!({"request": {"method": "DELETE", "url": "Patient/w1"}});
    for twice in [
        vec![put(1, true), delete.clone()],
        vec![put(1, true), by_criteria.clone()],
        vec![by_criteria.clone(), put(1, true)],
    ] {
        let oo = outcome_of(post_transaction(&s, twice).await, 400).await;
        assert!(oo.to_string().contains("changes a resource once"), "{oo}");
    }
}

/// `ifNoneMatch` and `ifModifiedSince` make a GET entry a conditional read (304).
#[tokio::test]
async fn conditional_reads_in_a_bundle() {
    let s = TestServer::start().await;
    s.put_json("Patient/c1", &json!({"resourceType":"Patient","id":"c1"}))
        .await;
    let read = |request: Value| json!({"request": request});
    let bundle = json!({"resourceType":"Bundle","type":"batch","entry":[
        read(json!({"method":"GET","url":"Patient/c1","ifNoneMatch":"W/\"1\""})),
        read(json!({"method":"GET","url":"Patient/c1","ifNoneMatch":"W/\"7\""})),
        read(json!({"method":"GET","url":"Patient/c1","ifModifiedSince":"2999-01-01T00:00:00Z"})),
        read(json!({"method":"GET","url":"Patient/c1","ifModifiedSince":"2001-01-01T00:00:00Z"})),
        read(json!({"method":"DELETE","url":"Patient/c1","ifNoneMatch":"*"})),
        read(json!({"method":"GET","url":"Patient/c1/_history/1"})),
        read(json!({"method":"GET","url":"Patient/c1/_history/9"})),
    ]});
    let response = json_of(post_bundle(&s, &bundle).await, 200).await;
    let answer = |i: usize| response["entry"][i].clone();
    assert_eq!(answer(0)["response"]["status"], "304 Not Modified");
    assert!(answer(0).get("resource").is_none());
    assert_eq!(answer(0)["response"]["etag"], "W/\"1\"");
    assert_eq!(answer(1)["response"]["status"], "200 OK");
    assert_eq!(answer(1)["resource"]["id"], "c1");
    assert_eq!(answer(2)["response"]["status"], "304 Not Modified");
    assert_eq!(answer(3)["response"]["status"], "200 OK");
    // A write does not take a read's conditions: refused, not ignored.
    assert_eq!(answer(4)["response"]["status"], "400");
    // A vread entry.
    assert_eq!(answer(5)["response"]["status"], "200 OK");
    assert_eq!(answer(5)["resource"]["meta"]["versionId"], "1");
    assert_eq!(answer(6)["response"]["status"], "404");
    json_of(s.get("Patient/c1").await, 200).await;
}

/// Conditional creates: new records join the batched creates; two entries with
/// the same criteria make one resource, and references to either point to it;
/// one that matches what another entry deletes is refused (R4: overlap).
#[tokio::test]
async fn conditional_creates_in_one_transaction() {
    let s = TestServer::start().await;
    let nir = |n: u32| format!("27401{n:08}");
    let post = |n: u32, uuid: &str| {
        json!({"fullUrl": format!("urn:uuid:{uuid}"),
               "resource": {"resourceType": "Patient", "identifier": [{"system": INS, "value": nir(n)}]},
               "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={INS}|{}", nir(n))}})
    };
    let flag = |uuid: &str| {
        json!({"resource": {"resourceType": "Flag", "status": "active", "code": {"text": "sortie"},
                            "subject": {"reference": format!("urn:uuid:{uuid}")}},
               "request": {"method": "POST", "url": "Flag"}})
    };
    let a = "00000000-0000-4000-8000-0000000000a1";
    let b = "00000000-0000-4000-8000-0000000000b1";
    let response = json_of(
        post_transaction(
            &s,
            vec![
                post(1, a),
                post(2, "00000000-0000-4000-8000-0000000000a2"),
                post(1, b),
                flag(b),
            ],
        )
        .await,
        200,
    )
    .await;
    let answer = |i: usize| response["entry"][i]["response"].clone();
    assert_eq!(answer(0)["status"], "201 Created");
    assert_eq!(answer(1)["status"], "201 Created");
    assert_eq!(answer(2)["status"], "200 OK");
    assert_eq!(answer(2)["location"], answer(0)["location"]);
    let patient = answer(0)["location"]
        .as_str()
        .and_then(|l| l.split("/_history").next())
        .unwrap_or_default()
        .to_owned();
    let flag_at = answer(3)["location"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let stored = json_of(
        s.get(flag_at.split("/_history").next().unwrap_or("")).await,
        200,
    )
    .await;
    assert_eq!(stored["subject"]["reference"], patient.as_str());
    let found = json_of(
        s.get(&format!("Patient?identifier={INS}|{}", nir(1))).await,
        200,
    )
    .await;
    assert_eq!(found["total"], 1);
    // Pushed again: every record matched, nothing new.
    let again = json_of(
        post_transaction(&s, vec![post(1, a), post(2, b)]).await,
        200,
    )
    .await;
    assert_eq!(again["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(again["entry"][1]["response"]["status"], "200 OK");
    assert_eq!(s.version_count().await, 3);
    // Criteria that another entry's new resource meets, whatever their form, are
    // found (the same criteria in another order; another parameter of the same
    // record); criteria the first entry's own resource does not meet give the
    // later entry a resource of its own.
    let named = |n: u32, family: &str, criteria: String| {
        json!({"resource": {"resourceType": "Patient", "name": [{"family": family}],
                            "identifier": [{"system": INS, "value": nir(n)}]},
               "request": {"method": "POST", "url": "Patient", "ifNoneExist": criteria}})
    };
    let ins = |n: u32| format!("identifier={INS}|{}", nir(n));
    let response = json_of(
        post_transaction(
            &s,
            vec![
                named(5, "Arnaud", format!("{}&gender=unknown", ins(5))),
                named(5, "Arnaud", format!("gender=unknown&{}", ins(5))),
                named(6, "Berthier", ins(6)),
                named(6, "Berthier", "family=berthier".to_owned()),
                named(9, "Caron", format!("{}&family=caron", ins(9))),
                named(9, "Caron", format!("family=caron&{}", ins(9))),
            ],
        )
        .await,
        200,
    )
    .await;
    let answer = |i: usize| response["entry"][i]["response"].clone();
    let statuses: Vec<Value> = (0..6).map(|i| answer(i)["status"].clone()).collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "201 Created",
            "201 Created",
            "200 OK",
            "201 Created",
            "200 OK"
        ]
    );
    assert_ne!(answer(1)["location"], answer(0)["location"]);
    assert_eq!(answer(3)["location"], answer(2)["location"]);
    assert_eq!(answer(5)["location"], answer(4)["location"]);
    // Deleting what a conditional create of the same Bundle matches: refused.
    let delete = json!({"request": {"method": "DELETE", "url": patient}});
    let oo = outcome_of(post_transaction(&s, vec![post(1, a), delete]).await, 400).await;
    assert!(oo.to_string().contains("changes a resource once"), "{oo}");
    json_of(s.get(&patient).await, 200).await;
}

/// GET entries may search: the entry's resource is a searchset Bundle, and in a
/// transaction the search sees what the transaction wrote before it.
#[tokio::test]
async fn search_entries() {
    let s = TestServer::start().await;
    s.put_json(
        "Patient/s1",
        &json!({"resourceType":"Patient","id":"s1","name":[{"family":"Lemaire"}]}),
    )
    .await;
    let bundle = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"request":{"method":"GET","url":"Patient?name=lemaire&_sort=_id"}},
        {"resource":{"resourceType":"Patient","id":"s2","name":[{"family":"Lemaire"}]},
         "request":{"method":"PUT","url":"Patient/s2"}},
        {"request":{"method":"GET","url":"Patient?name=nobody"}}]});
    let response = json_of(post_bundle(&s, &bundle).await, 200).await;
    let found = &response["entry"][0];
    assert_eq!(found["response"]["status"], "200 OK");
    assert_eq!(found["resource"]["type"], "searchset");
    // GET entries run last: the search sees the PUT of the same transaction.
    assert_eq!(found["resource"]["total"], 2);
    assert_eq!(found["resource"]["entry"][1]["resource"]["id"], "s2");
    let full_url = found["resource"]["entry"][0]["fullUrl"]
        .as_str()
        .unwrap_or("");
    assert!(
        full_url.starts_with("http") && full_url.ends_with("/Patient/s1"),
        "{full_url}"
    );
    assert_eq!(response["entry"][2]["resource"]["total"], 0);
    // In a batch, a search that cannot run fails alone.
    let batch = json!({"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Patient?birthdate=notadate"}},
        {"request":{"method":"GET","url":"Patient"}}]});
    let response = json_of(post_bundle(&s, &batch).await, 200).await;
    assert_eq!(response["entry"][0]["response"]["status"], "400");
    assert_eq!(response["entry"][1]["resource"]["total"], 2);
    // A read of a deleted resource: 410, as the REST read answers.
    s.http
        .delete(s.url("Patient/s1"))
        .send()
        .await
        .expect("delete");
    let read = json!({"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Patient/s1"}},
        {"request":{"method":"GET","url":"Patient?name=lemaire","ifNoneMatch":"W/\"1\""}}]});
    let response = json_of(post_bundle(&s, &read).await, 200).await;
    assert_eq!(response["entry"][0]["response"]["status"], "410");
    assert_eq!(response["entry"][1]["response"]["status"], "400");
}

/// `Prefer: return=representation` puts each written resource in its entry;
/// `Prefer: handling=strict` applies to search entries.
#[tokio::test]
async fn prefer_applies_to_entries() {
    let s = TestServer::start().await;
    let post = |bundle: &Value, prefer: &'static str| {
        s.http
            .post(s.url(""))
            .header("content-type", "application/fhir+json")
            .header("prefer", prefer)
            .body(bundle.to_string())
            .send()
    };
    let bundle = json!({"resourceType":"Bundle","type":"transaction","entry":[
        {"resource":{"resourceType":"Patient","id":"r1","gender":"other"},
         "request":{"method":"PUT","url":"Patient/r1"}}]});
    let plain = json_of(post(&bundle, "return=minimal").await.expect("post"), 200).await;
    assert!(plain["entry"][0].get("resource").is_none());
    let mut changed = bundle.clone();
    changed["entry"][0]["resource"]["gender"] = json!("female");
    let full = json_of(
        post(&changed, "return=representation").await.expect("post"),
        200,
    )
    .await;
    assert_eq!(full["entry"][0]["resource"]["gender"], "female");
    assert_eq!(full["entry"][0]["resource"]["meta"]["versionId"], "2");
    let search = json!({"resourceType":"Bundle","type":"batch","entry":[
        {"request":{"method":"GET","url":"Patient?nonsense=1"}}]});
    let lenient = json_of(post(&search, "handling=lenient").await.expect("post"), 200).await;
    assert_eq!(lenient["entry"][0]["response"]["status"], "200 OK");
    let strict = json_of(post(&search, "handling=strict").await.expect("post"), 200).await;
    assert_eq!(strict["entry"][0]["response"]["status"], "400");
}

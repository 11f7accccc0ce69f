//! Care circles: the GP in the patient's circle, the stay's practitioners in the
//! stay's team from admission to discharge, and `$care-circle` answering "who to
//! call" now.

use serde_json::json;

use crate::receiver::Receiver;
use crate::stays::{discharged, put, reachable_gp, stay};
use crate::support::{json_of, refs_by_mode, TestServer};

#[tokio::test]
async fn the_care_circle_shows_who_to_call_now() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    reachable_gp(&s, &gp.url()).await;
    put(
        &s,
        &json!({"resourceType": "Practitioner", "id": "hospitalist",
            "name": [{"family": "Roux", "given": ["Anne"]}]}),
        201,
    )
    .await;
    let mut admitted = stay("circ1", "in-progress");
    admitted["participant"] = json!([{"individual": {"reference": "Practitioner/hospitalist"}}]);
    put(&s, &admitted, 201).await;

    let circle = json_of(s.get("Patient/stay-patient/$care-circle").await, 200).await;
    assert_eq!(circle["type"], "searchset");
    assert_eq!(circle["total"], 2, "{circle}");
    let teams = refs_by_mode(&circle, "match");
    let circle_id = passerelle::coordination::circle::circle_id("stay-patient");
    let team_id = passerelle::coordination::circle::stay_team_id("circ1");
    let mut expected = vec![
        format!("CareTeam/{circle_id}"),
        format!("CareTeam/{team_id}"),
    ];
    expected.sort();
    let mut teams_sorted = teams.clone();
    teams_sorted.sort();
    assert_eq!(teams_sorted, expected);
    let mut contacts = refs_by_mode(&circle, "include");
    contacts.sort();
    assert_eq!(
        contacts,
        [
            "Endpoint/stay-gp-ep",
            "Practitioner/hospitalist",
            "Practitioner/stay-gp",
            "PractitionerRole/stay-gp-role"
        ]
    );
    // The GP's role in the circle, and "the patients whose circle I am in".
    let team = json_of(s.get(&format!("CareTeam/{circle_id}")).await, 200).await;
    assert_eq!(
        team["participant"][0]["role"][0]["coding"][0]["code"],
        "PCP"
    );
    let mine = json_of(
        s.get("CareTeam?participant=Practitioner/stay-gp").await,
        200,
    )
    .await;
    assert_eq!(mine["total"], 1);
    assert_eq!(
        mine["entry"][0]["resource"]["subject"]["reference"],
        "Patient/stay-patient"
    );

    // After the discharge the stay's team is over: the circle alone remains.
    let mut left = discharged("circ1");
    left["participant"] = admitted["participant"].clone();
    put(&s, &left, 200).await;
    let team = json_of(s.get(&format!("CareTeam/{team_id}")).await, 200).await;
    assert_eq!(team["status"], "inactive");
    assert_eq!(
        team["participant"][0]["period"]["end"],
        "2026-11-20T19:40:00+01:00"
    );
    let circle = json_of(s.get("Patient/stay-patient/$care-circle").await, 200).await;
    assert_eq!(
        refs_by_mode(&circle, "match"),
        [format!("CareTeam/{circle_id}")]
    );
    assert!(!refs_by_mode(&circle, "include").contains(&"Practitioner/hospitalist".to_owned()));

    assert_eq!(s.get("Patient/nobody/$care-circle").await.status(), 404);
    // Declared in the CapabilityStatement.
    let metadata = json_of(s.get("metadata").await, 200).await;
    let patient = metadata["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert!(patient["operation"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["name"] == "care-circle"));
}

/// The community nurse a user adds to the care circle hears of the patient's
/// discharge as the GP does; once her membership ends, she no longer does.
#[tokio::test]
async fn members_of_the_care_circle_are_told_of_the_stay() {
    let s = TestServer::start().await;
    let (gp, nurse) = (Receiver::start().await, Receiver::start().await);
    reachable_gp(&s, &gp.url()).await;
    for resource in [
        json!({"resourceType": "Practitioner", "id": "idel", "name": [{"family": "Vidal", "given": ["Inès"]}]}),
        json!({"resourceType": "Endpoint", "id": "idel-ep", "status": "active",
            "connectionType": {"system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type", "code": "hl7-fhir-rest"},
            "payloadType": [{"text": "FHIR"}], "address": nurse.url()}),
        json!({"resourceType": "PractitionerRole", "id": "idel-role", "active": true,
            "practitioner": {"reference": "Practitioner/idel"}, "endpoint": [{"reference": "Endpoint/idel-ep"}]}),
    ] {
        put(&s, &resource, 201).await;
    }
    let circle_id = passerelle::coordination::circle::circle_id("stay-patient");
    let path = format!("CareTeam/{circle_id}");
    let mut circle = json_of(s.get(&path).await, 200).await;
    let nurse_member = json!({"member": {"reference": "Practitioner/idel"},
        "role": [{"text": "Infirmière libérale"}], "period": {"start": "2026-11-01"}});
    circle["participant"]
        .as_array_mut()
        .unwrap()
        .push(nurse_member);
    json_of(s.put_json(&path, &circle).await, 200).await;

    put(&s, &stay("circ3", "in-progress"), 201).await;
    let adm = nurse.expect().await.json();
    assert_eq!(adm["recipient"][0]["reference"], "Practitioner/idel");
    assert_eq!(adm["encounter"]["reference"], "Encounter/circ3");
    gp.expect().await;

    // Her membership over, the discharge reaches the GP alone.
    let mut circle = json_of(s.get(&path).await, 200).await;
    let last = circle["participant"].as_array().unwrap().len() - 1;
    circle["participant"][last]["period"]["end"] = json!("2026-11-10");
    json_of(s.put_json(&path, &circle).await, 200).await;
    put(&s, &discharged("circ3"), 200).await;
    assert_eq!(
        gp.expect().await.json()["extension"][0]["valueCodeableConcept"]["coding"][0]["code"],
        "SOR"
    );
    assert!(nurse
        .next(std::time::Duration::from_millis(700))
        .await
        .is_none());
}

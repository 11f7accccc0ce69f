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

//! Appointments: booking a free Slot makes it busy in the same transaction, a busy
//! Slot cannot be booked again (also when bookings race), a cancellation frees it.

use serde_json::{json, Value};

use crate::stays::put;
use crate::support::{json_of, outcome_of, TestServer};

fn slot(id: &str) -> Value {
    json!({"resourceType": "Slot", "id": id, "status": "free",
        "schedule": {"reference": "Schedule/cardio-ussel"},
        "start": "2026-12-03T09:00:00+01:00", "end": "2026-12-03T09:30:00+01:00"})
}

fn appointment(slot: &str, patient: &str) -> Value {
    json!({"resourceType": "Appointment", "status": "booked",
        "slot": [{"reference": format!("Slot/{slot}")}],
        "start": "2026-12-03T09:00:00+01:00", "end": "2026-12-03T09:30:00+01:00",
        "participant": [
            {"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/cardiologist"}, "status": "accepted"}]})
}

async fn slot_status(s: &TestServer, id: &str) -> String {
    json_of(s.get(&format!("Slot/{id}")).await, 200).await["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn setup(s: &TestServer, slot_id: &str) {
    put(
        s,
        &json!({"resourceType": "Schedule", "id": "cardio-ussel", "active": true,
            "actor": [{"reference": "Practitioner/cardiologist"}],
            "comment": "Consultation avancée de cardiologie, Maison de santé d'Ussel"}),
        if slot_id == "first" { 201 } else { 200 },
    )
    .await;
    put(s, &slot(slot_id), 201).await;
}

#[tokio::test]
async fn a_booking_takes_the_slot_and_a_cancellation_frees_it() {
    let s = TestServer::start().await;
    setup(&s, "first").await;
    let booked = json_of(
        s.post_json("Appointment", &appointment("first", "p1"))
            .await,
        201,
    )
    .await;
    assert_eq!(slot_status(&s, "first").await, "busy");
    // Another patient on the busy slot: 409, nothing written.
    let before = s.version_count().await;
    let refused = outcome_of(
        s.post_json("Appointment", &appointment("first", "p2"))
            .await,
        409,
    )
    .await;
    assert!(refused.to_string().contains("slot-taken"), "{refused}");
    assert_eq!(s.version_count().await, before);
    // A booking on a slot that does not exist: 422.
    outcome_of(
        s.post_json("Appointment", &appointment("nowhere", "p2"))
            .await,
        422,
    )
    .await;
    // Cancelled: the slot is free and can be booked again.
    let mut cancelled = booked.clone();
    cancelled["status"] = json!("cancelled");
    cancelled["cancelationReason"] = json!({"text": "Patient hospitalisé"});
    let path = format!("Appointment/{}", booked["id"].as_str().unwrap());
    json_of(s.put_json(&path, &cancelled).await, 200).await;
    assert_eq!(slot_status(&s, "first").await, "free");
    json_of(
        s.post_json("Appointment", &appointment("first", "p2"))
            .await,
        201,
    )
    .await;
    assert_eq!(slot_status(&s, "first").await, "busy");
}

/// Ten bookings of one slot at once: exactly one wins, the nine others get 409.
#[tokio::test]
async fn of_ten_racing_bookings_exactly_one_wins() {
    let s = TestServer::start().await;
    setup(&s, "first").await;
    setup(&s, "raced").await;
    let attempts = (0..10).map(|n| {
        let body = appointment("raced", &format!("p{n}"));
        let s = &s;
        async move { s.post_json("Appointment", &body).await.status().as_u16() }
    });
    let mut statuses = futures_util::future::join_all(attempts).await;
    statuses.sort_unstable();
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409, 409, 409]);
    let booked = json_of(s.get("Appointment?slot=Slot/raced").await, 200).await;
    assert_eq!(booked["total"], 1, "{booked}");
    assert_eq!(slot_status(&s, "raced").await, "busy");
}

/// The patient's GP, reachable, hears of the booking and of its cancellation.
#[tokio::test]
async fn the_gp_hears_of_bookings_and_cancellations() {
    let s = TestServer::start().await;
    let gp = crate::receiver::Receiver::start().await;
    crate::stays::reachable_gp(&s, &gp.url()).await;
    setup(&s, "first").await;
    let booked = json_of(
        s.post_json("Appointment", &appointment("first", "stay-patient"))
            .await,
        201,
    )
    .await;
    let heard = gp.expect().await.json();
    assert_eq!(
        (heard["resourceType"].as_str(), heard["status"].as_str()),
        (Some("Appointment"), Some("booked"))
    );
    let mut cancelled = booked.clone();
    cancelled["status"] = json!("cancelled");
    let path = format!("Appointment/{}", booked["id"].as_str().unwrap());
    json_of(s.put_json(&path, &cancelled).await, 200).await;
    assert_eq!(gp.expect().await.json()["status"], "cancelled");
}

//! Appointments in a hospital service or a *consultation avancée*: an
//! Appointment that is booked holds its `Slot`s (they become `busy` in the same
//! transaction), one cancelled frees them, and a Slot already busy cannot be
//! booked again. Pure: the write path locks and reads the Slots.

use serde_json::{json, Value};

use super::recipients::{self, Recipient};

/// The Appointment statuses that hold their slots.
const HOLDING: &[&str] = &["pending", "booked", "arrived", "fulfilled", "checked-in"];

/// Whether an Appointment holds its slots.
pub fn holds(appointment: &Value) -> bool {
    appointment["status"]
        .as_str()
        .is_some_and(|s| HOLDING.contains(&s))
}

/// The ids of the Slots an Appointment names.
pub fn slots_of(appointment: &Value) -> Vec<&str> {
    super::ids_referenced(&appointment["slot"], "Slot")
}

/// The slots a write of an Appointment takes and frees: `previous` the live
/// version it replaces, `next` the new one (none for a delete).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Booking {
    pub taken: Vec<String>,
    pub freed: Vec<String>,
}

pub fn booking(previous: Option<&Value>, next: Option<&Value>) -> Booking {
    let held = |a: Option<&Value>| -> Vec<String> {
        a.filter(|a| holds(a))
            .map(|a| slots_of(a).into_iter().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    let (before, after) = (held(previous), held(next));
    Booking {
        taken: after
            .iter()
            .filter(|s| !before.contains(s))
            .cloned()
            .collect(),
        freed: before.into_iter().filter(|s| !after.contains(s)).collect(),
    }
}

/// The Slot once booked; `Err` names why it cannot be.
pub fn take(slot: &Value) -> Result<Value, String> {
    match slot["status"].as_str() {
        Some("free") => {
            let mut busy = slot.clone();
            busy["status"] = json!("busy");
            Ok(busy)
        }
        Some(other) => Err(format!("the slot is {other}, not free")),
        None => Err("the slot has no status".to_owned()),
    }
}

/// The Slot once its appointment is cancelled: free again if it was busy.
pub fn free(slot: &Value) -> Option<Value> {
    (slot["status"] == "busy").then(|| {
        let mut free = slot.clone();
        free["status"] = json!("free");
        free
    })
}

/// The patient an Appointment is for (its first Patient participant).
pub fn patient_of(appointment: &Value) -> Option<&str> {
    appointment["participant"]
        .as_array()?
        .iter()
        .filter_map(|p| p["actor"]["reference"].as_str()?.strip_prefix("Patient/"))
        .find(|id| !id.is_empty() && !id.contains('/'))
}

/// The id of the Subscription through which `member` of the care circle of
/// `Patient/{patient_id}` hears of the patient's appointments.
pub fn follower_subscription_id(patient_id: &str, member: &str) -> String {
    super::derived_id(
        "appointments",
        &format!("Appointment\nPatient/{patient_id}\n{member}"),
    )
}

/// The Subscription through which a member of the patient's care circle (the
/// GP first) hears of every booking and cancellation of the patient's
/// appointments.
pub fn follower_subscription(patient_id: &str, member: &Recipient) -> Value {
    let who = member.reference.as_deref().unwrap_or_default();
    recipients::kept_for(
        member,
        format!("Appointment?patient=Patient/{patient_id}"),
        format!("Rendez-vous du patient Patient/{patient_id}, pour {who} (cercle de soins)"),
        Some(patient_id),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appointment(status: &str, slots: &[&str]) -> Value {
        json!({"resourceType": "Appointment", "status": status,
            "slot": slots.iter().map(|s| json!({"reference": format!("Slot/{s}")})).collect::<Vec<_>>()})
    }

    #[test]
    fn a_booking_takes_its_slots_and_a_cancellation_frees_them() {
        assert_eq!(
            booking(None, Some(&appointment("booked", &["s1"]))),
            Booking {
                taken: vec!["s1".into()],
                freed: vec![]
            }
        );
        assert_eq!(
            booking(
                Some(&appointment("booked", &["s1"])),
                Some(&appointment("cancelled", &["s1"]))
            ),
            Booking {
                taken: vec![],
                freed: vec!["s1".into()]
            }
        );
        // Moved to another slot; kept as it was; deleted.
        assert_eq!(
            booking(
                Some(&appointment("booked", &["s1"])),
                Some(&appointment("booked", &["s2"]))
            ),
            Booking {
                taken: vec!["s2".into()],
                freed: vec!["s1".into()]
            }
        );
        assert_eq!(
            booking(
                Some(&appointment("booked", &["s1"])),
                Some(&appointment("arrived", &["s1"]))
            ),
            Booking::default()
        );
        assert_eq!(
            booking(Some(&appointment("booked", &["s1"])), None).freed,
            ["s1"]
        );
        // A proposal holds nothing.
        assert_eq!(
            booking(None, Some(&appointment("proposed", &["s1"]))),
            Booking::default()
        );
    }

    #[test]
    fn the_circle_of_the_patient_follows_the_appointments() {
        let mut booked = appointment("booked", &["s1"]);
        booked["participant"] = json!([{"actor": {"reference": "Practitioner/dr"}},
            {"actor": {"reference": "Patient/p1"}}]);
        assert_eq!(patient_of(&booked), Some("p1"));
        let gp = Recipient {
            reference: Some("Practitioner/gp".into()),
            address: "https://cabinet.example/hook".into(),
        };
        let sub = follower_subscription("p1", &gp);
        assert_eq!(sub["criteria"], "Appointment?patient=Patient/p1");
        crate::fhir::validate::validate_resource(&sub).unwrap();
        assert_ne!(
            follower_subscription_id("p1", "Practitioner/gp"),
            follower_subscription_id("p2", "Practitioner/gp")
        );
    }

    #[test]
    fn only_a_free_slot_is_taken() {
        let slot = |status: &str| json!({"resourceType": "Slot", "status": status});
        assert_eq!(take(&slot("free")).unwrap()["status"], "busy");
        assert!(take(&slot("busy")).unwrap_err().contains("busy"));
        assert!(take(&slot("busy-unavailable")).is_err());
        assert_eq!(free(&slot("busy")).unwrap()["status"], "free");
        assert!(free(&slot("busy-unavailable")).is_none());
    }
}

//! The CapabilityStatement, generated from what the server really implements: the
//! R4 resource types of the definitions table, the interactions of the REST layer and
//! the search parameters of the search module.

use serde_json::{json, Value};

use crate::fhir::{definitions::R4, FHIR_VERSION};
use crate::search;
use crate::subscription::Topic;

/// The project's profiles (`profiles/coordination-profiles.json`): the referral
/// request and Task, the tele-expertise request, the escalation Task, and the
/// coordination CodeSystem.
const PROFILES: &str = include_str!("../../profiles/coordination-profiles.json");

/// The canonical URLs of the project's profiles of `res_type`.
fn supported_profiles(res_type: &str) -> Vec<String> {
    static BY_TYPE: std::sync::LazyLock<Vec<(String, String)>> = std::sync::LazyLock::new(|| {
        let bundle: Value = serde_json::from_str(PROFILES).unwrap_or_default();
        bundle["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| &e["resource"])
            .filter(|r| r["resourceType"] == "StructureDefinition")
            .filter_map(|r| {
                Some((
                    r["type"].as_str()?.to_owned(),
                    r["url"].as_str()?.to_owned(),
                ))
            })
            .collect()
    });
    BY_TYPE
        .iter()
        .filter(|(t, _)| t == res_type)
        .map(|(_, url)| url.clone())
        .collect()
}

/// Instance and type interactions served for every resource type.
const TYPE_INTERACTIONS: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
];

pub fn capability_statement(
    catalog: &super::Catalog,
    base_url: &str,
    software_version: &str,
    started: &str,
) -> Value {
    let params_in_force = catalog.params.current();
    let resources: Vec<Value> = R4
        .resource_types()
        .into_iter()
        .map(|rt| {
            let params: Vec<Value> = search::supported_params(&params_in_force, rt)
                .into_iter()
                .map(|(name, kind)| json!({"name": name, "type": kind}))
                .collect();
            let interactions: Vec<Value> = TYPE_INTERACTIONS
                .iter()
                .map(|code| json!({"code": code}))
                .collect();
            let mut resource = json!({
                "type": rt,
                "interaction": interactions,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "modified-since",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "searchParam": params,
            });
            let profiles = supported_profiles(rt);
            if !profiles.is_empty() {
                resource["supportedProfile"] = json!(profiles);
            }
            let mut operations = Vec::new();
            if matches!(rt, "Patient" | "Encounter") {
                operations.push(json!({
                    "name": "everything",
                    "definition": format!("http://hl7.org/fhir/OperationDefinition/{rt}-everything"),
                }));
            }
            if rt == "Patient" {
                operations.push(json!({
                    "name": "care-circle",
                    "definition": "https://passerelle.example.fr/fhir/OperationDefinition/Patient-care-circle",
                    "documentation": "Who is in the patient's care circle now: the active CareTeams about the patient, their current members and the PractitionerRoles, Organizations and Endpoints that reach them (a searchset).",
                }));
            }
            if rt == "ServiceRequest" {
                operations.push(json!({
                    "name": "turnaround",
                    "definition": "https://passerelle.example.fr/fhir/OperationDefinition/ServiceRequest-turnaround",
                    "documentation": "The requests a performer received (performer=, _since=): answered and open, and the median and 90th percentile delay from request to answer, in hours (a Parameters).",
                }));
            }
            if matches!(rt, "Patient" | "Group") {
                operations.push(json!({
                    "name": "export",
                    "definition": format!("{BULK_DATA}/OperationDefinition/{}-export", rt.to_lowercase()),
                }));
            }
            if !operations.is_empty() {
                resource["operation"] = Value::Array(operations);
            }
            if rt == "Subscription" {
                resource["operation"] = subscription_operations();
            }
            resource
        })
        .collect();
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": started,
        "publisher": "Passerelle",
        "kind": "instance",
        "software": {"name": "Passerelle", "version": software_version},
        "implementation": {"description": "Passerelle FHIR server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "application/fhir+xml"],
        "rest": [{
            "mode": "server",
            // The R4 Backport's list of the topics a client may subscribe to.
            "extension": topic_extensions(&catalog.topics),
            "resource": resources,
            "operation": [{"name": "export", "definition": format!("{BULK_DATA}/OperationDefinition/export")}],
            "interaction": [
                {"code": "transaction"},
                {"code": "batch"},
                {"code": "history-system"},
                {"code": "search-system"},
            ],
        }],
    })
}

const BULK_DATA: &str = "http://hl7.org/fhir/uv/bulkdata";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport";

fn subscription_operations() -> Value {
    json!([
        {"name": "status", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-status")},
        {"name": "events", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-events")},
        {"name": "get-ws-binding-token", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-get-ws-binding-token")},
        {"name": "deliveries", "definition": "https://passerelle.example.fr/fhir/OperationDefinition/subscription-deliveries",
         "documentation": "Each event with its delivery status, attempts and last error"},
    ])
}

fn topic_extensions(topics: &[Topic]) -> Value {
    topics
        .iter()
        .map(|t| {
            json!({
                "url": format!("{BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"),
                "valueCanonical": t.url,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_projects_profiles_are_valid_and_listed() {
        let bundle: Value = serde_json::from_str(PROFILES).expect("JSON");
        for entry in bundle["entry"].as_array().expect("entries") {
            crate::fhir::validate::validate_resource(&entry["resource"]).expect("valid");
            assert!(entry["resource"]["url"]
                .as_str()
                .is_some_and(|u| u.starts_with("https://passerelle.example.fr/fhir/")));
        }
        assert_eq!(supported_profiles("Task").len(), 2);
        assert_eq!(supported_profiles("ServiceRequest").len(), 2);
        assert!(supported_profiles("Patient").is_empty());
        let code_system = bundle["entry"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["resource"]["resourceType"] == "CodeSystem")
            .expect("the CodeSystem");
        assert_eq!(
            code_system["resource"]["url"],
            crate::coordination::acknowledgement::CODE_SYSTEM
        );
    }

    #[test]
    fn lists_every_resource_with_its_parameters() {
        let cs = capability_statement(
            &crate::service::Catalog::default(),
            "http://x/fhir",
            "0",
            "2026-11-25",
        );
        let resources = cs["rest"][0]["resource"].as_array().expect("resources");
        assert_eq!(resources.len(), R4.resource_types().len());
        let patient = resources
            .iter()
            .find(|r| r["type"] == "Patient")
            .expect("Patient");
        let names: Vec<&str> = patient["searchParam"]
            .as_array()
            .expect("params")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        for expected in [
            "_id",
            "_lastUpdated",
            "identifier",
            "family",
            "general-practitioner",
            "_tag",
        ] {
            assert!(names.contains(&expected), "{expected} in {names:?}");
        }
        assert!(names.contains(&"deceased"));
        let location = resources
            .iter()
            .find(|r| r["type"] == "Location")
            .expect("Location");
        assert!(location["searchParam"].to_string().contains("\"near\""));
        crate::fhir::validate::validate_resource(&cs).expect("a valid CapabilityStatement");
        let topics = cs["rest"][0]["extension"].as_array().expect("topics");
        assert!(topics.len() >= 5);
        assert!(cs["rest"][0]["extension"]
            .to_string()
            .contains("encounter-discharge"));
    }
}

//! The CapabilityStatement, generated from what the server really implements: the
//! R4 resource types of the definitions table, the interactions of the REST layer and
//! the search parameters of the search module.

use serde_json::{json, Value};

use crate::auth::SmartSettings;
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
    smart: Option<&SmartSettings>,
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
            let mut operations = vec![json!({
                "name": "validate",
                "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                "documentation": "Checks a resource against the base R4 definitions, as a write would; profiles are not checked yet (a warning says so).",
            })];
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
            if rt == "Subscription" {
                operations.extend(subscription_operations());
            }
            resource["operation"] = Value::Array(operations);
            resource
        })
        .collect();
    let mut cs = json!({
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
    });
    if let Some(smart) = smart {
        cs["rest"][0]["security"] = security(smart);
    }
    cs
}

/// `rest.security` of a server that takes SMART on FHIR tokens: the service and
/// the authorisation server's endpoints (SMART App Launch's `oauth-uris`).
fn security(smart: &SmartSettings) -> Value {
    let uris: Vec<Value> = [
        ("authorize", &smart.authorize_url),
        ("token", &smart.token_url),
    ]
    .into_iter()
    .filter_map(|(url, value)| Some(json!({"url": url, "valueUri": value.as_deref()?})))
    .collect();
    json!({
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": uris,
        }],
        "service": [{
            "coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR",
            }],
            "text": "OAuth 2.0 bearer tokens of the configured authorisation server, SMART on FHIR scopes (v1 and v2)",
        }],
        "description": "Every request but metadata and .well-known/smart-configuration needs a bearer token",
    })
}

/// `[base]/.well-known/smart-configuration` (SMART App Launch 2.0): the
/// configured issuer, its keys and endpoints, and what this server understands.
pub fn smart_configuration(smart: &SmartSettings) -> Value {
    let mut configuration = json!({
        "issuer": smart.issuer,
        "jwks_uri": smart.jwks_url,
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "scopes_supported": [
            "openid", "fhirUser", "launch/patient", "offline_access",
            "patient/*.rs", "user/*.cruds", "system/*.cruds",
            "patient/*.read", "user/*.read", "user/*.write", "system/*.read", "system/*.*"
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-standalone", "client-public", "client-confidential-symmetric",
            "client-confidential-asymmetric", "context-standalone-patient",
            "permission-patient", "permission-user", "permission-v1", "permission-v2"
        ],
    });
    if let Some(url) = &smart.authorize_url {
        configuration["authorization_endpoint"] = json!(url);
    }
    if let Some(url) = &smart.token_url {
        configuration["token_endpoint"] = json!(url);
    }
    configuration
}

const BULK_DATA: &str = "http://hl7.org/fhir/uv/bulkdata";
const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport";

fn subscription_operations() -> Vec<Value> {
    vec![
        json!({"name": "status", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-status")}),
        json!({"name": "events", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-events")}),
        json!({"name": "get-ws-binding-token", "definition": format!("{BACKPORT}/OperationDefinition/backport-subscription-get-ws-binding-token")}),
        json!({"name": "deliveries", "definition": "https://passerelle.example.fr/fhir/OperationDefinition/subscription-deliveries",
         "documentation": "Each event with its delivery status, attempts and last error"}),
    ]
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
    fn a_smart_server_says_so() {
        let smart = SmartSettings {
            issuer: "https://auth.example.fr".to_owned(),
            audience: "https://passerelle.example.fr/fhir".to_owned(),
            jwks_url: "https://auth.example.fr/certs".to_owned(),
            authorize_url: None,
            token_url: Some("https://auth.example.fr/token".to_owned()),
            client_organizations: Default::default(),
        };
        let cs = capability_statement(
            &crate::service::Catalog::default(),
            "http://x/fhir",
            "0",
            "2026-11-25",
            Some(&smart),
        );
        let security = &cs["rest"][0]["security"];
        assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
        assert_eq!(
            security["extension"][0]["extension"],
            json!([{"url": "token", "valueUri": "https://auth.example.fr/token"}])
        );
        let configuration = smart_configuration(&smart);
        assert_eq!(configuration["issuer"], "https://auth.example.fr");
        assert_eq!(
            configuration["token_endpoint"],
            "https://auth.example.fr/token"
        );
        assert!(configuration.get("authorization_endpoint").is_none());
    }

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
            None,
        );
        assert!(cs["rest"][0].get("security").is_none());
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

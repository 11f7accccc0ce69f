//! The FHIR REST URL space below the base, parsed into a route. Pure.

use crate::error::{FhirError, FhirResult};
use crate::fhir::{self, definitions::R4};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `[base]`
    System,
    /// `[base]/metadata`
    Metadata,
    /// `[base]/.well-known/smart-configuration`
    SmartConfiguration,
    /// `[base]/_history`
    SystemHistory,
    /// `[base]/[type]`
    Type(String),
    /// `[base]/[type]/_search`
    TypeSearch(String),
    /// `[base]/[type]/_history`
    TypeHistory(String),
    /// `[base]/[type]/[id]`
    Instance(String, String),
    /// `[base]/[type]/[id]/_history`
    InstanceHistory(String, String),
    /// `[base]/[type]/[id]/_history/[vid]`
    Version(String, String, String),
    /// `[base]/[compartment type]/[id]/[type]`: compartment search.
    Compartment(String, String, String),
    /// `[base]/[type]/[id]/$everything`
    Everything(String, String),
    /// `[base]/Patient/[id]/$care-circle`
    CareCircle(String),
    /// `[base]/$export`, `[base]/Patient/$export`, `[base]/Group/[id]/$export`:
    /// the type (`Patient`, `Group`) and the Group's id.
    Export(Option<String>, Option<String>),
    /// `[base]/$export-status/[job]`
    ExportStatus(String),
    /// `[base]/$export-file/[job]/[n]`
    ExportFile(String, String),
    /// `[base]/ServiceRequest/$turnaround`
    Turnaround,
    /// `[base]/Subscription[/id]/$status|$events|$deliveries`
    SubscriptionOperation(Option<String>, String),
    /// `[base]/[type]/$validate`, `[base]/[type]/[id]/$validate`
    Validate(String, Option<String>),
}

impl Route {
    /// The route's template, for logs and traces (no ids in span names).
    pub fn template(&self) -> &'static str {
        match self {
            Route::System => "/fhir",
            Route::Metadata => "/fhir/metadata",
            Route::SmartConfiguration => "/fhir/.well-known/smart-configuration",
            Route::SystemHistory => "/fhir/_history",
            Route::Type(_) => "/fhir/{type}",
            Route::TypeSearch(_) => "/fhir/{type}/_search",
            Route::TypeHistory(_) => "/fhir/{type}/_history",
            Route::Instance(..) => "/fhir/{type}/{id}",
            Route::InstanceHistory(..) => "/fhir/{type}/{id}/_history",
            Route::Version(..) => "/fhir/{type}/{id}/_history/{vid}",
            Route::Compartment(..) => "/fhir/{compartment}/{id}/{type}",
            Route::Everything(..) => "/fhir/{type}/{id}/$everything",
            Route::CareCircle(_) => "/fhir/Patient/{id}/$care-circle",
            Route::Turnaround => "/fhir/ServiceRequest/$turnaround",
            Route::Export(None, _) => "/fhir/$export",
            Route::Export(Some(_), None) => "/fhir/Patient/$export",
            Route::Export(Some(_), Some(_)) => "/fhir/Group/{id}/$export",
            Route::ExportStatus(_) => "/fhir/$export-status/{job}",
            Route::ExportFile(..) => "/fhir/$export-file/{job}/{n}",
            Route::Validate(_, None) => "/fhir/{type}/$validate",
            Route::Validate(_, Some(_)) => "/fhir/{type}/{id}/$validate",
            Route::SubscriptionOperation(None, _) => "/fhir/Subscription/{operation}",
            Route::SubscriptionOperation(Some(_), _) => "/fhir/Subscription/{id}/{operation}",
        }
    }
}

fn resource_type(segment: &str) -> FhirResult<String> {
    if R4.is_resource_type(segment) {
        Ok(segment.to_owned())
    } else {
        Err(FhirError::NotFound(format!(
            "'{segment}' is not a resource type known to this server"
        )))
    }
}

fn resource_id(segment: &str) -> FhirResult<String> {
    if fhir::is_valid_id(segment) {
        Ok(segment.to_owned())
    } else {
        Err(FhirError::bad_request(format!(
            "'{segment}' is not a valid resource id ([A-Za-z0-9-.]{{1,64}})"
        )))
    }
}

/// Parses the path below the FHIR base (`""`, `"Patient/1"` …).
pub fn parse(path: &str) -> FhirResult<Route> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        [] => Ok(Route::System),
        ["metadata"] => Ok(Route::Metadata),
        [".well-known", "smart-configuration"] => Ok(Route::SmartConfiguration),
        ["_history"] => Ok(Route::SystemHistory),
        ["$export"] => Ok(Route::Export(None, None)),
        ["Patient", "$export"] => Ok(Route::Export(Some("Patient".to_owned()), None)),
        ["Group", id, "$export"] => Ok(Route::Export(
            Some("Group".to_owned()),
            Some(resource_id(id)?),
        )),
        ["$export-status", job] => Ok(Route::ExportStatus(resource_id(job)?)),
        ["$export-file", job, n] => Ok(Route::ExportFile(resource_id(job)?, (*n).to_owned())),
        [t] => Ok(Route::Type(resource_type(t)?)),
        [t, "_search"] => Ok(Route::TypeSearch(resource_type(t)?)),
        [t, "_history"] => Ok(Route::TypeHistory(resource_type(t)?)),
        ["ServiceRequest", "$turnaround"] => Ok(Route::Turnaround),
        ["Subscription", op @ "$status"] => {
            Ok(Route::SubscriptionOperation(None, (*op).to_owned()))
        }
        ["Subscription", id, op @ ("$status" | "$events" | "$deliveries" | "$get-ws-binding-token")] => {
            Ok(Route::SubscriptionOperation(
                Some(resource_id(id)?),
                (*op).to_owned(),
            ))
        }
        [t, "$validate"] => Ok(Route::Validate(resource_type(t)?, None)),
        [t, id, "$validate"] => Ok(Route::Validate(resource_type(t)?, Some(resource_id(id)?))),
        [t, id] if id.starts_with('$') => {
            resource_type(t)?;
            Err(FhirError::NotFound(format!(
                "operation '{id}' is not supported"
            )))
        }
        [t, id] => Ok(Route::Instance(resource_type(t)?, resource_id(id)?)),
        [t, id, "_history"] => Ok(Route::InstanceHistory(resource_type(t)?, resource_id(id)?)),
        ["Patient", id, "$care-circle"] => Ok(Route::CareCircle(resource_id(id)?)),
        [t @ ("Patient" | "Encounter"), id, "$everything"] => {
            Ok(Route::Everything((*t).to_owned(), resource_id(id)?))
        }
        [t, id, target] if R4.is_resource_type(target) => Ok(Route::Compartment(
            resource_type(t)?,
            resource_id(id)?,
            (*target).to_owned(),
        )),
        [t, id, "_history", vid] => Ok(Route::Version(
            resource_type(t)?,
            resource_id(id)?,
            (*vid).to_owned(),
        )),
        _ => Err(FhirError::NotFound(format!("no FHIR endpoint at '{path}'"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_rest_url_space() {
        assert_eq!(parse("").expect("system"), Route::System);
        assert_eq!(parse("metadata").expect("md"), Route::Metadata);
        assert_eq!(
            parse("Patient").expect("type"),
            Route::Type("Patient".into())
        );
        assert_eq!(
            parse("Patient/p-1.2/_history/3").expect("vread"),
            Route::Version("Patient".into(), "p-1.2".into(), "3".into())
        );
        assert_eq!(parse("Nope/1").expect_err("type").status(), 404);
        assert_eq!(parse("Patient/a_b").expect_err("id").status(), 400);
        assert_eq!(parse("Patient/1/x/y/z").expect_err("deep").status(), 404);
        assert_eq!(
            parse("Patient/p1/Encounter").expect("compartment"),
            Route::Compartment("Patient".into(), "p1".into(), "Encounter".into())
        );
    }
}

//! Versions as rows: the version table's columns read into [`StoredVersion`], and
//! the reads of one or many versions.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::Value;
use tokio_postgres::Row;

use crate::error::FhirResult;

/// How a version came to be: the HTTP verb of the interaction that wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    fn parse(text: &str) -> Method {
        match text {
            "POST" => Method::Post,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            _ => Method::Put,
        }
    }
}

/// One stored version, as read back.
#[derive(Debug, Clone)]
pub struct StoredVersion {
    pub res_type: String,
    pub res_id: String,
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub method: Method,
    /// Position in the global change order (history paging cursor).
    pub seq: i64,
    /// The resource's JSON text, `resourceType` first; `None` for a delete.
    pub json: Option<String>,
}

impl StoredVersion {
    pub fn is_deleted(&self) -> bool {
        self.json.is_none()
    }
}

/// The current state of a resource, locked for update.
#[derive(Debug, Clone, Copy)]
pub struct Current {
    pub version_id: i64,
    pub last_updated: DateTime<Utc>,
    pub deleted: bool,
}

/// The columns every version query selects, in the order [`version_from_row`] reads.
pub(super) const VERSION_COLUMNS: &str =
    "v.res_type, v.res_id, v.version_id, v.last_updated, v.method, v.seq, \
     (v.resource - 'resourceType')::text";

/// JSONB sorts keys; FHIR readers expect `resourceType` first, so it is put back
/// in front of the stored text (which the query returns without it).
pub(super) fn with_type_first(res_type: &str, rest: &str) -> String {
    let inner = rest.trim_start();
    let inner = inner.strip_prefix('{').unwrap_or(inner).trim_start();
    let mut json = String::with_capacity(inner.len() + res_type.len() + 22);
    json.push_str("{\"resourceType\": \"");
    json.push_str(res_type);
    match inner.starts_with('}') {
        true => json.push_str("\"}"),
        false => {
            json.push_str("\", ");
            json.push_str(inner);
        }
    }
    json
}

pub(super) fn version_from_row(row: &Row) -> StoredVersion {
    let res_type: String = row.get(0);
    // Borrowed from the row: the text is copied once, into its final place.
    let rest: Option<&str> = row.get(6);
    let json = rest.map(|rest| with_type_first(&res_type, rest));
    StoredVersion {
        res_id: row.get(1),
        version_id: row.get(2),
        last_updated: row.get(3),
        method: Method::parse(row.get(4)),
        seq: row.get(5),
        json,
        res_type,
    }
}

/// The newest version of a resource, written once (the REST read's statement).
static READ_LATEST: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v
         WHERE v.res_type = $1 AND v.res_id = $2 ORDER BY v.version_id DESC LIMIT 1"
    )
});

/// The newest version of a resource (deleted or not), `None` if it never existed.
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.read_latest",
    level = "debug",
    skip_all
)]
pub async fn read_latest(
    client: &impl GenericClient,
    res_type: &str,
    res_id: &str,
) -> FhirResult<Option<StoredVersion>> {
    let stmt = client.prepare_cached(&READ_LATEST).await?;
    let row = client.query_opt(&stmt, &[&res_type, &res_id]).await?;
    Ok(row.as_ref().map(version_from_row))
}

/// The `res_type` resources created by the current transaction whose reference
/// search parameter `param` points at `target_type/target_id`.
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.created_here_referring",
    level = "debug",
    skip_all
)]
pub async fn created_here_referring(
    client: &impl GenericClient,
    res_type: &str,
    param: &str,
    target_type: &str,
    target_id: &str,
) -> FhirResult<Vec<StoredVersion>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v
         JOIN search_reference sr ON sr.res_type = v.res_type AND sr.res_id = v.res_id
         WHERE v.res_type = $1 AND v.version_id = 1 AND v.txid = pg_current_xact_id()
           AND sr.param = $2 AND sr.target_type = $3 AND sr.target_id = $4"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client
        .query(&stmt, &[&res_type, &param, &target_type, &target_id])
        .await?;
    Ok(rows.iter().map(version_from_row).collect())
}

#[tracing::instrument(
    target = "passerelle::db",
    name = "db.read_version",
    level = "debug",
    skip_all
)]
pub async fn read_version(
    client: &impl GenericClient,
    res_type: &str,
    res_id: &str,
    version_id: i64,
) -> FhirResult<Option<StoredVersion>> {
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v
         WHERE v.res_type = $1 AND v.res_id = $2 AND v.version_id = $3"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let row = client
        .query_opt(&stmt, &[&res_type, &res_id, &version_id])
        .await?;
    Ok(row.as_ref().map(version_from_row))
}

/// The current versions of the resources `keys` (type, id) that exist and are
/// not deleted, in one query.
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.read_current",
    level = "debug",
    skip_all
)]
pub async fn read_current(
    client: &impl GenericClient,
    keys: &[(&str, &str)],
) -> FhirResult<Vec<StoredVersion>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let (types, ids): (Vec<&str>, Vec<&str>) = keys.iter().copied().unzip();
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM unnest($1::text[], $2::text[]) AS k(res_type, res_id)
         JOIN resource r ON r.res_type = k.res_type AND r.res_id = k.res_id AND NOT r.deleted
         JOIN resource_version v ON v.res_type = r.res_type AND v.res_id = r.res_id
              AND v.version_id = r.version_id"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let rows = client.query(&stmt, &[&types, &ids]).await?;
    Ok(rows.iter().map(version_from_row).collect())
}

/// PractitionerRoles of a practitioner looked at for its endpoints.
const MAX_ROLES: i64 = 20;

/// The Endpoints that may reach each of `references` (`Practitioner/…` through
/// its PractitionerRoles, in id order, at most [`MAX_ROLES`]; a PractitionerRole
/// or an Organization through its own), in one query: `(index in references,
/// the holder's `active`, the Endpoint)`, in the order to try them (by holder,
/// then as the holder lists them). Which of them takes callbacks is the caller's
/// rule (`coordination::recipients`).
pub async fn endpoints_of(
    client: &impl GenericClient,
    references: &[&str],
) -> FhirResult<Vec<(usize, Value, Value)>> {
    if references.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client
        .prepare_cached(
            "WITH wanted AS (
                SELECT split_part(ref, '/', 1) AS t, split_part(ref, '/', 2) AS id, ord
                  FROM unnest($1::text[]) WITH ORDINALITY AS w(ref, ord)
             ), holders AS (
                SELECT w.ord, 'PractitionerRole'::text AS t, roles.res_id AS id
                  FROM wanted w CROSS JOIN LATERAL (
                       SELECT DISTINCT sr.res_id FROM search_reference sr
                        WHERE sr.res_type = 'PractitionerRole' AND sr.param = 'practitioner'
                          AND sr.target_type = 'Practitioner' AND sr.target_id = w.id
                        ORDER BY sr.res_id LIMIT $2) roles
                 WHERE w.t = 'Practitioner'
                UNION ALL
                SELECT w.ord, w.t, w.id FROM wanted w WHERE w.t <> 'Practitioner'
             )
             SELECT h.ord, hv.resource -> 'active', ev.resource
               FROM holders h
               JOIN resource hr ON hr.res_type = h.t AND hr.res_id = h.id AND NOT hr.deleted
               JOIN resource_version hv ON hv.res_type = hr.res_type AND hv.res_id = hr.res_id
                    AND hv.version_id = hr.version_id
              CROSS JOIN LATERAL jsonb_array_elements(
                    CASE WHEN jsonb_typeof(hv.resource -> 'endpoint') = 'array'
                         THEN hv.resource -> 'endpoint' ELSE '[]'::jsonb END
                    ) WITH ORDINALITY AS e(ref, n)
               JOIN resource er ON er.res_type = 'Endpoint' AND NOT er.deleted
                    AND er.res_id = substr(e.ref ->> 'reference', length('Endpoint/') + 1)
                    AND starts_with(e.ref ->> 'reference', 'Endpoint/')
               JOIN resource_version ev ON ev.res_type = er.res_type AND ev.res_id = er.res_id
                    AND ev.version_id = er.version_id
              ORDER BY h.ord, h.id, e.n",
        )
        .await?;
    let rows = client.query(&stmt, &[&references, &MAX_ROLES]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let ord: i64 = r.get(0);
            let active: Option<Value> = r.get(1);
            (
                usize::try_from(ord - 1).unwrap_or_default(),
                active.unwrap_or(Value::Null),
                r.get(2),
            )
        })
        .collect())
}

/// For each of the ServiceRequests `ids` that exist: when it was asked (its
/// `authoredOn`, else its first version), when it was first `completed`, and
/// its status now; one query.
pub async fn request_timeline(
    client: &impl GenericClient,
    ids: &[String],
) -> FhirResult<Vec<(DateTime<Utc>, Option<DateTime<Utc>>, String)>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let stmt = client
        .prepare_cached(
            "SELECT first.last_updated, first.resource ->> 'authoredOn',
                    (SELECT min(v.last_updated) FROM resource_version v
                      WHERE v.res_type = r.res_type AND v.res_id = r.res_id
                        AND v.resource ->> 'status' = 'completed'),
                    now_v.resource ->> 'status'
               FROM resource r
               JOIN resource_version first ON first.res_type = r.res_type
                    AND first.res_id = r.res_id AND first.version_id = 1
               JOIN resource_version now_v ON now_v.res_type = r.res_type
                    AND now_v.res_id = r.res_id AND now_v.version_id = r.version_id
              WHERE r.res_type = 'ServiceRequest' AND r.res_id = ANY($1) AND NOT r.deleted",
        )
        .await?;
    let rows = client.query(&stmt, &[&ids]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let first: DateTime<Utc> = r.get(0);
            let authored: Option<String> = r.get(1);
            let asked = authored
                .as_deref()
                .and_then(crate::fhir::datetime::parse_range)
                .map_or(first, |range| range.low);
            let status: Option<String> = r.get(3);
            (asked, r.get(2), status.unwrap_or_default())
        })
        .collect())
}

/// The current DocumentReferences about `Encounter/{encounter_id}`
/// (`context.encounter`), at most `limit`, oldest first.
pub async fn documents_of_stay(
    client: &impl GenericClient,
    encounter_id: &str,
    limit: i64,
) -> FhirResult<Vec<Value>> {
    let stmt = client
        .prepare_cached(
            "SELECT v.resource FROM search_reference sr
               JOIN resource r ON r.res_type = sr.res_type AND r.res_id = sr.res_id AND NOT r.deleted
               JOIN resource_version v ON v.res_type = r.res_type AND v.res_id = r.res_id
                    AND v.version_id = r.version_id
              WHERE sr.res_type = 'DocumentReference' AND sr.param = 'encounter'
                AND sr.target_type = 'Encounter' AND sr.target_id = $1
              ORDER BY v.last_updated LIMIT $2",
        )
        .await?;
    let rows = client.query(&stmt, &[&encounter_id, &limit]).await?;
    Ok(rows.iter().filter_map(|r| r.get(0)).collect())
}

/// Versions by (type, id, version), in one query; those that exist.
#[tracing::instrument(
    target = "passerelle::db",
    name = "db.read_versions",
    level = "debug",
    skip_all
)]
pub async fn read_versions(
    client: &impl GenericClient,
    keys: &[(&str, &str, i64)],
) -> FhirResult<Vec<StoredVersion>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {VERSION_COLUMNS} FROM resource_version v
           JOIN unnest($1::text[], $2::text[], $3::int8[]) AS k(t, id, n)
             ON v.res_type = k.t AND v.res_id = k.id AND v.version_id = k.n"
    );
    let stmt = client.prepare_cached(&sql).await?;
    let types: Vec<&str> = keys.iter().map(|k| k.0).collect();
    let ids: Vec<&str> = keys.iter().map(|k| k.1).collect();
    let versions: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let rows = client.query(&stmt, &[&types, &ids, &versions]).await?;
    Ok(rows.iter().map(version_from_row).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_type_goes_first() {
        assert_eq!(
            with_type_first("Patient", r#"{"id": "1", "active": true}"#),
            r#"{"resourceType": "Patient", "id": "1", "active": true}"#
        );
        assert_eq!(
            with_type_first("Basic", "{}"),
            r#"{"resourceType": "Basic"}"#
        );
    }
}

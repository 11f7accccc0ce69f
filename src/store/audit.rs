//! The audit trail's table: rows appended in batches, read by patient, agent,
//! action, entity and date, newest first.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Statement;

use crate::error::FhirResult;

/// One audited request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Its sequence number once stored (0 before).
    pub seq: i64,
    pub recorded: DateTime<Utc>,
    /// `C`, `R`, `U`, `D` or `E` (AuditEvent.action).
    pub action: String,
    /// The interaction (`read`, `search-type`, `create` …) or operation.
    pub subtype: String,
    /// HTTP status of the answer.
    pub status: i32,
    pub client_id: Option<String>,
    pub subject: Option<String>,
    pub fhir_user: Option<String>,
    /// The address the request came from.
    pub source: Option<String>,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub entity_type: Option<String>,
    pub entity_id: Option<String>,
    pub patient_id: Option<String>,
    pub break_glass: Option<String>,
}

/// The columns of a row, in the order [`APPEND`] takes them.
macro_rules! columns {
    () => {
        "recorded, action, subtype, status, client_id, subject, fhir_user, source, method, \
         path, query, entity_type, entity_id, patient_id, break_glass"
    };
}
const COLUMNS: &str = columns!();

/// The statement that appends a batch of rows, one array per column, for
/// [`append`] (prepared once per connection).
pub const APPEND: &str = concat!(
    "INSERT INTO audit_event (",
    columns!(),
    ") SELECT * FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::int4[], \
     $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], \
     $12::text[], $13::text[], $14::text[], $15::text[])"
);

/// Appends `rows` in one statement, `append` being [`APPEND`] prepared on
/// `client`'s connection (a connection of its own, or a write's transaction).
pub async fn append(
    client: &impl tokio_postgres::GenericClient,
    append: &Statement,
    rows: &[AuditRow],
) -> FhirResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let text =
        |f: fn(&AuditRow) -> Option<&str>| -> Vec<Option<&str>> { rows.iter().map(f).collect() };
    let recorded: Vec<DateTime<Utc>> = rows.iter().map(|r| r.recorded).collect();
    let actions = text(|r| Some(&r.action));
    let subtypes = text(|r| Some(&r.subtype));
    let statuses: Vec<i32> = rows.iter().map(|r| r.status).collect();
    let clients = text(|r| r.client_id.as_deref());
    let subjects = text(|r| r.subject.as_deref());
    let users = text(|r| r.fhir_user.as_deref());
    let sources = text(|r| r.source.as_deref());
    let methods = text(|r| Some(&r.method));
    let paths = text(|r| Some(&r.path));
    let queries = text(|r| r.query.as_deref());
    let entity_types = text(|r| r.entity_type.as_deref());
    let entity_ids = text(|r| r.entity_id.as_deref());
    // A request about a Patient is about her: the entity index finds it, and a
    // second index entry per read would cost every request (bench `security`).
    let patients = text(|r| r.patient_id.as_deref().filter(|p| !names_patient(r, p)));
    let glass = text(|r| r.break_glass.as_deref());
    client
        .execute(
            append,
            &[
                &recorded,
                &actions,
                &subtypes,
                &statuses,
                &clients,
                &subjects,
                &users,
                &sources,
                &methods,
                &paths,
                &queries,
                &entity_types,
                &entity_ids,
                &patients,
                &glass,
            ],
        )
        .await?;
    Ok(())
}

/// Whether `patient` is the Patient `row` is about, as its entity.
fn names_patient(row: &AuditRow, patient: &str) -> bool {
    row.entity_type.as_deref() == Some("Patient") && row.entity_id.as_deref() == Some(patient)
}

/// What an audit search asks for; every criterion given must hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    pub id: Option<i64>,
    /// Requests about this patient: naming her, or about a resource of her record.
    pub patient: Option<String>,
    /// The user (`fhirUser`, e.g. `Practitioner/x`) or the client id.
    pub agent: Option<String>,
    pub action: Option<String>,
    pub subtype: Option<String>,
    /// `Type/id` of the resource.
    pub entity: Option<(String, String)>,
    /// `[from, to)`.
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// Older than this row (the next page).
    pub before_seq: Option<i64>,
    pub count: usize,
}

/// The rows that match, newest first.
pub async fn search(
    client: &impl GenericClient,
    query: &AuditQuery,
    record_pairs: &[(String, String)],
) -> FhirResult<Vec<AuditRow>> {
    let (pair_types, pair_params): (Vec<String>, Vec<String>) =
        record_pairs.iter().cloned().unzip();
    let entity_type = query.entity.as_ref().map(|e| e.0.clone());
    let entity_id = query.entity.as_ref().map(|e| e.1.clone());
    let count = query.count as i64;
    let sql = format!(
        "SELECT seq, {COLUMNS} FROM audit_event a \
         WHERE ($1::int8 IS NULL OR a.seq = $1) \
           AND ($2::text IS NULL OR a.patient_id = $2 \
                OR (a.entity_type = 'Patient' AND a.entity_id = $2) \
                OR (a.entity_type, a.entity_id) IN (SELECT x.res_type, x.res_id FROM search_reference x \
                    WHERE x.target_type = 'Patient' AND x.target_id = $2 \
                      AND (x.res_type, x.param) IN (SELECT * FROM unnest($11::text[], $12::text[])))) \
           AND ($3::text IS NULL OR a.fhir_user = $3 OR a.client_id = $3) \
           AND ($4::text IS NULL OR a.action = $4) \
           AND ($5::text IS NULL OR a.subtype = $5) \
           AND ($6::text IS NULL OR (a.entity_type = $6 AND a.entity_id = $7)) \
           AND ($8::timestamptz IS NULL OR a.recorded >= $8) \
           AND ($9::timestamptz IS NULL OR a.recorded < $9) \
           AND ($10::int8 IS NULL OR a.seq < $10) \
         ORDER BY a.seq DESC LIMIT $13"
    );
    let rows = client
        .query(
            &sql,
            &[
                &query.id,
                &query.patient,
                &query.agent,
                &query.action,
                &query.subtype,
                &entity_type,
                &entity_id,
                &query.from,
                &query.to,
                &query.before_seq,
                &pair_types,
                &pair_params,
                &count,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let mut row = AuditRow {
                seq: r.get(0),
                recorded: r.get(1),
                action: r.get(2),
                subtype: r.get(3),
                status: r.get(4),
                client_id: r.get(5),
                subject: r.get(6),
                fhir_user: r.get(7),
                source: r.get(8),
                method: r.get(9),
                path: r.get(10),
                query: r.get(11),
                entity_type: r.get(12),
                entity_id: r.get(13),
                patient_id: r.get(14),
                break_glass: r.get(15),
            };
            if row.entity_type.as_deref() == Some("Patient") {
                row.patient_id = row.patient_id.or_else(|| row.entity_id.clone());
            }
            row
        })
        .collect())
}

//! The audit trail: every request to the FHIR API recorded before its answer
//! leaves, as the IHE Basic Audit Log Patterns describe a RESTful access (who, from
//! where, what, when, the outcome), and served back as R4 `AuditEvent`s.
//!
//! Recording is a group commit: requests hand their record to the writer, which
//! appends whatever has queued up in one statement and then lets those requests
//! answer. The writer runs on a thread of its own with its own connection: its
//! steps do not queue behind the requests' tasks, and a pool that slow requests
//! hold does not hold every answer behind the records. An answer never leaves
//! before its record is stored; a record that cannot be stored turns the answer
//! into a 503.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls, Statement};

use crate::error::{FhirError, FhirResult};
use crate::fhir::datetime;
use crate::store::audit::{AuditQuery, AuditRow};

/// Records appended in one statement at most.
const MAX_BATCH: usize = 512;

/// Records waiting for the writer at most; requests beyond wait their turn.
const QUEUE: usize = 8192;

/// The longest a batch may take to be stored (connecting included); past it,
/// its requests are answered 503 and the connection is made afresh.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

type Pending = (AuditRow, oneshot::Sender<bool>);

/// The writer of the audit trail of a server.
pub struct Auditor {
    sender: mpsc::Sender<Pending>,
}

impl Auditor {
    /// Starts the writer, on a thread of its own, appending to the database
    /// `config` names; it stops when the auditor is dropped.
    pub fn start(mut config: tokio_postgres::Config) -> std::io::Result<Arc<Auditor>> {
        // A statement that outlives its batch's timeout is stopped by PostgreSQL
        // (its requests were answered 503; it must not commit later nor pile up).
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or_default(),
            WRITE_TIMEOUT.as_millis()
        );
        config.options(options.trim());
        config.connect_timeout(WRITE_TIMEOUT);
        let (sender, receiver) = mpsc::channel::<Pending>(QUEUE);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || runtime.block_on(write_batches(config, receiver)))?;
        Ok(Arc::new(Auditor { sender }))
    }

    /// Stores `row`; `false` when it could not be.
    pub async fn record(&self, row: AuditRow) -> bool {
        let (done, stored) = oneshot::channel();
        if self.sender.send((row, done)).await.is_err() {
            return false;
        }
        stored.await.unwrap_or(false)
    }
}

/// The writer's connection and its prepared append.
struct Appender {
    client: Client,
    append: Statement,
}

/// The writer: takes what has queued up (waiting for the first record), appends
/// it, tells each request whether its record is stored; until the queue closes.
async fn write_batches(config: tokio_postgres::Config, mut receiver: mpsc::Receiver<Pending>) {
    let mut appender: Option<Appender> = None;
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let (rows, waiting): (Vec<AuditRow>, Vec<oneshot::Sender<bool>>) =
            batch.into_iter().unzip();
        let stored = match tokio::time::timeout(
            WRITE_TIMEOUT,
            append(&config, &mut appender, &rows),
        )
        .await
        {
            Ok(stored) => stored,
            Err(_) => Err(FhirError::Unavailable(
                "the audit trail did not answer in time".into(),
            )),
        };
        if let Err(e) = &stored {
            tracing::error!(error = %e, records = rows.len(), "audit records not stored");
            // Made afresh for the next batch: the database may have gone away.
            appender = None;
        }
        for done in waiting {
            let _ = done.send(stored.is_ok());
        }
    }
}

/// Appends `rows` over the writer's connection, connecting first when it has none.
async fn append(
    config: &tokio_postgres::Config,
    appender: &mut Option<Appender>,
    rows: &[AuditRow],
) -> FhirResult<()> {
    let ready = match appender.take() {
        Some(ready) if !ready.client.is_closed() => ready,
        _ => {
            let (client, connection) = config.connect(NoTls).await?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::warn!(error = %e, "the audit writer's connection ended");
                }
            });
            let append = client.prepare(crate::store::audit::APPEND).await?;
            Appender { client, append }
        }
    };
    crate::store::audit::append(&ready.client, &ready.append, rows).await?;
    *appender = Some(ready);
    Ok(())
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";

/// The OAuth client of a request, as an identifier.
pub const CLIENT_SYSTEM: &str = "urn:passerelle:oauth-client";

/// An audit record as an R4 AuditEvent (IHE BALP's RESTful activity). Pure.
pub fn render(row: &AuditRow) -> Value {
    let network = row
        .source
        .as_ref()
        .map(|address| json!({"address": address, "type": "2"}));
    let mut agents = Vec::new();
    if let Some(user) = &row.fhir_user {
        let mut agent = json!({
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                  "code": "IRCP", "display": "information recipient"}]},
            "who": {"reference": user},
            "requestor": true,
        });
        if let Some(subject) = &row.subject {
            agent["altId"] = json!(subject);
        }
        if let Some(network) = &network {
            agent["network"] = network.clone();
        }
        agents.push(agent);
    }
    match &row.client_id {
        Some(client) => {
            let mut agent = json!({
                "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                "who": {"identifier": {"system": CLIENT_SYSTEM, "value": client}},
                "requestor": row.fhir_user.is_none(),
            });
            if let (Some(network), None) = (&network, &row.fhir_user) {
                agent["network"] = network.clone();
            }
            agents.push(agent);
        }
        None if agents.is_empty() => {
            let mut agent = json!({"who": {"display": "anonymous"}, "requestor": true});
            if let Some(network) = &network {
                agent["network"] = network.clone();
            }
            agents.push(agent);
        }
        None => {}
    }
    let mut entities = Vec::new();
    if let (Some(t), Some(id)) = (&row.entity_type, &row.entity_id) {
        entities.push(json!({
            "what": {"reference": format!("{t}/{id}")},
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
        }));
    }
    if let Some(patient) = &row.patient_id {
        entities.push(json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
            "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
        }));
    }
    let request = match &row.query {
        Some(q) => format!("{} {}?{q}", row.method, row.path),
        None => format!("{} {}", row.method, row.path),
    };
    entities.push(json!({
        "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
        "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
        "query": base64::engine::general_purpose::STANDARD.encode(request.as_bytes()),
    }));
    let interaction = match row.subtype.starts_with('$') {
        true => {
            json!({"system": "https://passerelle.example.fr/fhir/CodeSystem/operation", "code": row.subtype})
        }
        false => json!({"system": "http://hl7.org/fhir/restful-interaction", "code": row.subtype}),
    };
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": row.seq.to_string(),
        "meta": {"lastUpdated": datetime::format_instant(row.recorded)},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                 "code": "rest", "display": "RESTful Operation"},
        "subtype": [interaction],
        "action": row.action,
        "recorded": datetime::format_instant(row.recorded),
        "outcome": match row.status {
            ..=399 => "0",
            400..=499 => "4",
            _ => "8",
        },
        "outcomeDesc": format!("HTTP {}", row.status),
        "agent": agents,
        "source": {
            "observer": {"display": "Passerelle"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                      "code": "4", "display": "Application Server"}],
        },
        "entity": entities,
    });
    if let Some(reason) = &row.break_glass {
        event["purposeOfEvent"] = json!([{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason",
                        "code": "BTG", "display": "break the glass"}],
            "text": reason,
        }]);
    }
    event
}

/// Largest page of an audit search.
const MAX_COUNT: usize = 1000;

/// The criteria of `GET AuditEvent?…`: `_id`, `patient`, `agent`, `action`,
/// `subtype`, `entity`, `date` (with `ge`, `gt`, `le`, `lt`, `eq`), `_count`,
/// and `_before` (the cursor of the next page). Anything else: 400. Pure.
pub fn parse_query(params: &[(String, String)]) -> FhirResult<AuditQuery> {
    let mut query = AuditQuery {
        count: 50,
        ..AuditQuery::default()
    };
    let bad = |m: String| FhirError::bad_request(m);
    for (name, value) in params {
        match name.as_str() {
            "_id" => {
                query.id = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("AuditEvent ids are numbers, not '{value}'")))?,
                )
            }
            "patient" => {
                query.patient = Some(value.strip_prefix("Patient/").unwrap_or(value).to_owned())
            }
            "agent" => query.agent = Some(value.clone()),
            "action" => query.action = Some(value.clone()),
            "subtype" => {
                query.subtype = Some(value.rsplit('|').next().unwrap_or(value).to_owned())
            }
            "entity" => {
                let (t, id) = value
                    .split_once('/')
                    .ok_or_else(|| bad(format!("entity '{value}' is not Type/id")))?;
                query.entity = Some((t.to_owned(), id.to_owned()));
            }
            "date" => {
                let (prefix, text) = match value.get(..2) {
                    Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &value[2..]),
                    _ => ("eq", value.as_str()),
                };
                let range = datetime::parse_range(text)
                    .ok_or_else(|| bad(format!("date '{value}' is not a date")))?;
                let later = |a: Option<DateTime<Utc>>, b| Some(a.map_or(b, |a: DateTime<Utc>| a.max(b)));
                let earlier = |a: Option<DateTime<Utc>>, b| Some(a.map_or(b, |a: DateTime<Utc>| a.min(b)));
                match prefix {
                    "ge" => query.from = later(query.from, range.low),
                    "gt" => query.from = later(query.from, range.high),
                    "le" => query.to = earlier(query.to, range.high),
                    "lt" => query.to = earlier(query.to, range.low),
                    _ => {
                        query.from = later(query.from, range.low);
                        query.to = earlier(query.to, range.high);
                    }
                }
            }
            "_count" => {
                query.count = value
                    .parse::<usize>()
                    .map_err(|_| bad(format!("_count '{value}' is not a number")))?
                    .min(MAX_COUNT)
            }
            "_before" => {
                query.before_seq = Some(
                    value
                        .parse()
                        .map_err(|_| bad(format!("_before '{value}' is not a page cursor")))?,
                )
            }
            "_format" | "_pretty" => {}
            other => {
                return Err(bad(format!(
                    "AuditEvent is searched by _id, patient, agent, action, subtype, entity and date, not '{other}'"
                )))
            }
        }
    }
    Ok(query)
}

/// `GET AuditEvent?…`: a searchset of the matching records, newest first, with
/// a `next` link while there may be more.
pub async fn search(pool: &Pool, base: &str, params: &[(String, String)]) -> FhirResult<Value> {
    let mut query = parse_query(params)?;
    let wanted = query.count;
    query.count += 1;
    let (_, pairs) = crate::search::compartment::patient_record();
    let client = pool.get().await?;
    let mut rows = crate::store::audit::search(&client, &query, &pairs).await?;
    let more = rows.len() > wanted;
    rows.truncate(wanted);
    let own: Vec<(String, String)> = params
        .iter()
        .filter(|(k, _)| k != "_before")
        .cloned()
        .collect();
    let encode = |params: &[(String, String)]| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish()
    };
    let mut links =
        vec![json!({"relation": "self", "url": format!("{base}/AuditEvent?{}", encode(params))})];
    if let (true, Some(last)) = (more, rows.last()) {
        let mut next = own.clone();
        next.push(("_before".to_owned(), last.seq.to_string()));
        links.push(
            json!({"relation": "next", "url": format!("{base}/AuditEvent?{}", encode(&next))}),
        );
    }
    let entries: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({"fullUrl": format!("{base}/AuditEvent/{}", row.seq),
                   "resource": render(row), "search": {"mode": "match"}})
        })
        .collect();
    Ok(json!({"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}))
}

/// `GET AuditEvent/{id}`.
pub async fn read(pool: &Pool, id: &str) -> FhirResult<Value> {
    let unknown = || FhirError::NotFound(format!("AuditEvent/{id} is not known"));
    let query = AuditQuery {
        id: Some(id.parse().map_err(|_| unknown())?),
        count: 1,
        ..AuditQuery::default()
    };
    let client = pool.get().await?;
    let rows = crate::store::audit::search(&client, &query, &[]).await?;
    rows.first().map(render).ok_or_else(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> AuditRow {
        AuditRow {
            seq: 1,
            recorded: Utc::now(),
            action: "R".into(),
            subtype: "read".into(),
            status: 200,
            client_id: Some("dpi".into()),
            subject: Some("u1".into()),
            fhir_user: Some("Practitioner/dr".into()),
            source: Some("10.0.0.7".into()),
            method: "GET".into(),
            path: "/fhir/Encounter/e1".into(),
            query: None,
            entity_type: Some("Encounter".into()),
            entity_id: Some("e1".into()),
            patient_id: None,
            break_glass: Some("urgence vitale".into()),
        }
    }

    #[test]
    fn a_record_is_an_audit_event() {
        let event = render(&row());
        crate::fhir::validate::validate_resource(&event).expect("a valid AuditEvent");
        assert_eq!(event["agent"][0]["who"]["reference"], "Practitioner/dr");
        assert_eq!(event["agent"][0]["network"]["address"], "10.0.0.7");
        assert_eq!(event["agent"][1]["who"]["identifier"]["value"], "dpi");
        assert_eq!(event["entity"][0]["what"]["reference"], "Encounter/e1");
        assert_eq!(event["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
        assert_eq!(event["outcome"], "0");
        let mut refused = row();
        refused.status = 404;
        refused.fhir_user = None;
        refused.client_id = None;
        let event = render(&refused);
        assert_eq!(event["outcome"], "4");
        assert_eq!(event["agent"][0]["who"]["display"], "anonymous");
    }

    #[test]
    fn audit_searches() {
        let params = crate::search::parse_form(
            "patient=Patient/p1&agent=Practitioner/dr&date=ge2026-11-01&date=lt2026-12&_count=5000",
        );
        let query = parse_query(&params).expect("query");
        assert_eq!(query.patient.as_deref(), Some("p1"));
        assert_eq!(query.count, MAX_COUNT);
        assert_eq!(
            query.from.map(datetime::format_instant).as_deref(),
            Some("2026-11-01T00:00:00.000000+00:00")
        );
        assert_eq!(
            query.to.map(datetime::format_instant).as_deref(),
            Some("2026-12-01T00:00:00.000000+00:00")
        );
        assert!(parse_query(&crate::search::parse_form("name=x")).is_err());
        assert!(parse_query(&crate::search::parse_form("date=yesterday")).is_err());
    }
}

//! `cargo bench --bench passerelle -- security`: what authorisation and the audit
//! trail cost. The same reads by id and searches by identifier, with 16 clients,
//! on the same database: with neither (auth unset, audit off), then with SMART
//! tokens (signed by a key of this process, its JWKS served here): a backend's
//! token (`system/*.rs`, scopes only) without the audit trail, then with every
//! request audited, then a GP's (`user/*.rs`, held to her care circles: every
//! patient has her as GP), audited.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use base64::Engine as _;
use serde_json::json;

use crate::common::{run_phase, start_guarded, start_server, Connection, Phase};
use passerelle::auth::{AuthSetting, SmartSettings};
use passerelle::server::{self, DatabaseChoice, StartError};

pub struct SecurityBenchOptions {
    pub database: DatabaseChoice,
    pub patients: usize,
    pub read_passes: usize,
    pub concurrency: usize,
}

const ISSUER: &str = "https://auth.bench.test";
const AUDIENCE: &str = "https://passerelle.bench.test/fhir";

/// A signing key of this process and the JWKS that publishes it, served on a
/// local port: the settings of a server that trusts it, and a token maker.
async fn issuer() -> Result<(SmartSettings, impl Fn(serde_json::Value) -> String), String> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let rsa = openssl::rsa::Rsa::generate(2048).map_err(|e| e.to_string())?;
    let der = rsa.private_key_to_der().map_err(|e| e.to_string())?;
    let jwks = json!({"keys": [{"kty": "RSA", "kid": "bench", "alg": "RS256", "use": "sig",
        "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())}]})
    .to_string();
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { ([("content-type", "application/json")], jwks) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let key = jsonwebtoken::EncodingKey::from_rsa_der(&der);
    let sign = move |extra: serde_json::Value| {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "bench",
            "client_id": "bench", "iat": now, "exp": now + 3600});
        if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some("bench".to_owned());
        jsonwebtoken::encode(&header, &claims, &key).unwrap_or_default()
    };
    let settings = SmartSettings {
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        jwks_url: format!("http://{address}/certs"),
        authorize_url: None,
        token_url: None,
        client_organizations: Default::default(),
    };
    Ok((settings, sign))
}

/// Reads by id and searches by identifier on `addr` with `token` (or none).
async fn phases(
    label: &'static str,
    addr: SocketAddr,
    token: Option<String>,
    ids: &Arc<Vec<OnceLock<String>>>,
    options: &SecurityBenchOptions,
) -> Result<(Phase, Phase), String> {
    let n = options.patients;
    let order = move |i: usize| (i * 7919) % n;
    let connect = move |token: Option<String>| async move {
        match token {
            Some(t) => Connection::with_token(addr, &t).await,
            None => Connection::open(addr).await,
        }
    };
    let (ids_r, token_r) = (ids.clone(), token.clone());
    let read = run_phase(
        label,
        n * options.read_passes,
        options.concurrency,
        move |counter| {
            let (ids, token) = (ids_r.clone(), token_r.clone());
            async move {
                let mut conn = connect(token).await?;
                let mut latencies = Vec::new();
                while let Some(i) = counter.next() {
                    let path = format!("/fhir/Patient/{}", ids[order(i % n)].get().ok_or("id")?);
                    latencies.push(conn.timed_get(&path).await?);
                }
                Ok(latencies)
            }
        },
    )
    .await?;
    let search = run_phase(label, n, options.concurrency, move |counter| {
        let token = token.clone();
        async move {
            let mut conn = connect(token).await?;
            let mut latencies = Vec::new();
            while let Some(i) = counter.next() {
                let path = format!(
                    "/fhir/Patient?identifier=urn:oid:1.2.250.1.213.1.4.10%7C{:013}",
                    1_700_000_000_000u64 + order(i) as u64
                );
                latencies.push(conn.timed_get(&path).await?);
            }
            Ok(latencies)
        }
    })
    .await?;
    Ok((read, search))
}

pub async fn run(options: SecurityBenchOptions) -> Result<String, StartError> {
    let err = StartError::Database;
    let database = server::open_bench_database(&options.database, options.concurrency + 4).await?;
    let (settings, sign) = issuer().await.map_err(err)?;
    let n = options.patients;
    let ids: Arc<Vec<OnceLock<String>>> = Arc::new((0..n).map(|_| OnceLock::new()).collect());

    // The patients, each with the GP whose token is timed last.
    let loader = start_server(&database).await?;
    let addr = loader.addr;
    let mut conn = Connection::open(addr).await.map_err(err)?;
    let gp = json!({"resourceType": "Practitioner", "id": "bench-gp"}).to_string();
    conn.send("PUT", "/fhir/Practitioner/bench-gp", Some(gp.as_bytes()))
        .await
        .map_err(err)?;
    let ids_w = ids.clone();
    let load = run_phase(
        "patients with their GP",
        n,
        options.concurrency,
        move |counter| {
            let ids = ids_w.clone();
            async move {
                let mut conn = Connection::open(addr).await?;
                let mut latencies = Vec::new();
                while let Some(i) = counter.next() {
                    let mut body = crate::rest::patient(i);
                    body["generalPractitioner"] = json!([{"reference": "Practitioner/bench-gp"}]);
                    let t = Instant::now();
                    let id = conn
                        .create("/fhir/Patient", body.to_string().as_bytes())
                        .await?;
                    latencies.push(t.elapsed());
                    let _ = ids[i].set(id);
                }
                Ok(latencies)
            }
        },
    )
    .await
    .map_err(err)?;
    loader.stop();
    crate::common::vacuum_analyze(&database).await?;

    let tuning = || passerelle::delivery::Tuning {
        workers: 0,
        ..Default::default()
    };
    let off = start_guarded(&database, tuning(), AuthSetting::Unset, false).await?;
    let open = phases("no auth, no audit", off.addr, None, &ids, &options)
        .await
        .map_err(err)?;
    off.stop();
    // Tokens without the audit trail, to tell their cost from its.
    let system = sign(json!({"scope": "system/*.rs"}));
    let unaudited = start_guarded(
        &database,
        tuning(),
        AuthSetting::Smart(settings.clone()),
        false,
    )
    .await?;
    let tokens_only = phases(
        "system/ token, not audited",
        unaudited.addr,
        Some(system.clone()),
        &ids,
        &options,
    )
    .await
    .map_err(err)?;
    unaudited.stop();
    let on = start_guarded(&database, tuning(), AuthSetting::Smart(settings), true).await?;
    let backend = phases(
        "system/ token, audited",
        on.addr,
        Some(system),
        &ids,
        &options,
    )
    .await
    .map_err(err)?;
    let user = sign(json!({"scope": "user/*.rs", "fhirUser": "Practitioner/bench-gp"}));
    let practitioner = phases(
        "GP's user/ token (circle), audited",
        on.addr,
        Some(user),
        &ids,
        &options,
    )
    .await
    .map_err(err)?;
    on.stop();
    database.close().await;

    let share = |on: &Phase, off: &Phase| on.per_second() / off.per_second();
    let line = |what: &str, (read, search): &(Phase, Phase)| {
        format!(
            "{what}\n  reads:    {}\n  searches: {}",
            read.line(),
            search.line()
        )
    };
    Ok(format!(
        "Passerelle bench-security: {n} patients, {} clients, {} cores\n{}\n{}\n{}\n{}\n{}\n\
         system/ token, no audit / off: reads {:.2}, searches {:.2}\n\
         system/ token + audit / off: reads {:.2}, searches {:.2}\n\
         GP's token (care circle) + audit / off: reads {:.2}, searches {:.2}",
        options.concurrency,
        std::thread::available_parallelism().map_or(0, |p| p.get()),
        load.line(),
        line("no auth, no audit", &open),
        line("system/*.rs token, audit off", &tokens_only),
        line("system/*.rs token, every request audited", &backend),
        line(
            "GP's user/*.rs token held to her care circle, audited",
            &practitioner
        ),
        share(&tokens_only.0, &open.0),
        share(&tokens_only.1, &open.1),
        share(&backend.0, &open.0),
        share(&backend.1, &open.1),
        share(&practitioner.0, &open.0),
        share(&practitioner.1, &open.1),
    ))
}

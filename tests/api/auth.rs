//! SMART on FHIR: real tokens signed with keys the test generates (RSA and EC),
//! published as a JWKS by a listener the test starts; the server checks each
//! token and holds each request against its scopes.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use crate::support::{json_of, outcome_of, TestServer};

const ISSUER: &str = "https://auth.passerelle.test/realms/sante";
const AUDIENCE: &str = "https://passerelle.test/fhir";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public JWK.
struct Key {
    kid: String,
    alg: Algorithm,
    encoding: EncodingKey,
    jwk: Value,
}

fn rsa_key(kid: &str) -> Key {
    let rsa = openssl::rsa::Rsa::generate(2048).expect("RSA key");
    let der = rsa.private_key_to_der().expect("DER");
    Key {
        kid: kid.to_owned(),
        alg: Algorithm::RS256,
        encoding: EncodingKey::from_rsa_der(&der),
        jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
            "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())}),
    }
}

fn ec_key(kid: &str) -> Key {
    use openssl::{bn, ec, nid, pkey};
    let group = ec::EcGroup::from_curve_name(nid::Nid::X9_62_PRIME256V1).expect("P-256");
    let key = ec::EcKey::generate(&group).expect("EC key");
    let (mut x, mut y) = (bn::BigNum::new().expect("x"), bn::BigNum::new().expect("y"));
    let mut ctx = bn::BigNumContext::new().expect("ctx");
    key.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .expect("point");
    let pkcs8 = pkey::PKey::from_ec_key(key)
        .expect("pkey")
        .private_key_to_pkcs8()
        .expect("PKCS#8");
    Key {
        kid: kid.to_owned(),
        alg: Algorithm::ES256,
        encoding: EncodingKey::from_ec_der(&pkcs8),
        jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
            "x": b64(&x.to_vec_padded(32).expect("x")), "y": b64(&y.to_vec_padded(32).expect("y"))}),
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Claims valid for five minutes, with `scope` and the extra claims given.
fn claims(scope: &str, extra: Value) -> Value {
    let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1",
        "client_id": "dpi-hopital", "iat": now(), "nbf": now() - 5, "exp": now() + 300,
        "scope": scope});
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
        claims.extend(extra.clone());
    }
    claims
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding).expect("sign")
}

/// The issuer's JWKS, served by a listener of the test.
async fn serve_jwks(keys: &[&Key]) -> String {
    let set = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    let app = axum::Router::new().route(
        "/certs",
        axum::routing::get(move || {
            let set = set.clone();
            async move { ([("content-type", "application/json")], set.to_string()) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}/certs")
}

/// A server that requires tokens of the test's issuer (RSA and EC keys
/// published), and those keys.
async fn smart_server() -> (TestServer, Key, Key) {
    smart_server_holding("").await
}

/// [`smart_server`], with `system/` clients held to organisations
/// (`PASSERELLE_AUTH_CLIENT_ORGANIZATIONS`).
async fn smart_server_holding(client_organizations: &str) -> (TestServer, Key, Key) {
    let (rsa, ec) = (rsa_key("rsa-1"), ec_key("ec-1"));
    let jwks_url = serve_jwks(&[&rsa, &ec]).await;
    let mut options = crate::support::test_options();
    options.auth = passerelle::auth::AuthSetting::Smart(passerelle::auth::SmartSettings {
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        jwks_url,
        authorize_url: Some(format!("{ISSUER}/protocol/openid-connect/auth")),
        token_url: Some(format!("{ISSUER}/protocol/openid-connect/token")),
        client_organizations: passerelle::auth::parse_client_organizations(client_organizations)
            .expect("allow-lists"),
    });
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    (s, rsa, ec)
}

async fn get_with(s: &TestServer, path: &str, token: &str) -> reqwest::Response {
    s.http
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET")
}

async fn send_with(
    s: &TestServer,
    method: reqwest::Method,
    path: &str,
    token: &str,
    body: &Value,
) -> reqwest::Response {
    s.http
        .request(method, s.url(path))
        .bearer_auth(token)
        .header("content-type", "application/fhir+json")
        .body(body.to_string())
        .send()
        .await
        .expect("send")
}

/// PUTs a resource at its id with `token`; the write must succeed.
async fn put_with(s: &TestServer, token: &str, resource: &Value) {
    let path = format!(
        "{}/{}",
        resource["resourceType"].as_str().expect("type"),
        resource["id"].as_str().expect("id")
    );
    let status = send_with(s, reqwest::Method::PUT, &path, token, resource)
        .await
        .status();
    assert!(status.is_success(), "{path}: {status}");
}

/// Kicks off an export with `token` and polls its status until the manifest:
/// the status path (relative to the base) and the manifest.
async fn export_with(s: &TestServer, token: &str, path: &str) -> (String, Value) {
    let kick = s
        .http
        .get(s.url(path))
        .bearer_auth(token)
        .header("prefer", "respond-async")
        .send()
        .await
        .expect("kick-off");
    assert_eq!(kick.status(), 202, "{path}");
    let status_path = kick.headers()["content-location"]
        .to_str()
        .expect("status url")
        .trim_start_matches(&s.base)
        .trim_start_matches('/')
        .to_owned();
    for _ in 0..100 {
        let status = get_with(s, &status_path, token).await;
        match status.status().as_u16() {
            202 => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            200 => {
                let manifest: Value = status.json().await.expect("manifest");
                assert_eq!(
                    manifest["requiresAccessToken"], true,
                    "files need the token"
                );
                return (status_path, manifest);
            }
            other => panic!("export status {other}"),
        }
    }
    panic!("the export did not finish");
}

/// `Type/id` of every resource in an export's files, read with `token`, sorted.
async fn exported_ids(s: &TestServer, token: &str, manifest: &Value) -> Vec<String> {
    let mut ids = Vec::new();
    for output in manifest["output"].as_array().expect("output") {
        let url = output["url"].as_str().expect("url");
        let path = url.trim_start_matches(&s.base).trim_start_matches('/');
        let file = get_with(s, path, token).await;
        assert_eq!(file.status(), 200, "{path}");
        for line in file.text().await.expect("ndjson").lines() {
            let resource: Value = serde_json::from_str(line).expect("a resource");
            ids.push(format!(
                "{}/{}",
                resource["resourceType"].as_str().unwrap_or_default(),
                resource["id"].as_str().unwrap_or_default()
            ));
        }
    }
    ids.sort();
    ids
}

/// 401 with a Bearer challenge and an OperationOutcome saying why.
async fn refused(response: reqwest::Response, why: &str) {
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        challenge.starts_with("Bearer realm=\"passerelle\""),
        "{challenge}"
    );
    let outcome = outcome_of(response, 401).await;
    assert_eq!(outcome["issue"][0]["code"], "login");
    let text = outcome["issue"][0]["diagnostics"].to_string();
    assert!(text.contains(why), "{why}: {text}");
}

#[tokio::test]
async fn only_valid_tokens_of_the_issuer_get_in() {
    let (s, rsa, ec) = smart_server().await;
    let all = claims("system/*.*", json!({}));

    // Without a token: a challenge without error code.
    let bare = s.get("Patient").await;
    assert_eq!(
        bare.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer realm=\"passerelle\"")
    );
    outcome_of(bare, 401).await;
    // Signed by either published key: in.
    for key in [&rsa, &ec] {
        json_of(get_with(&s, "Patient", &sign(key, &all)).await, 200).await;
    }
    // What a client reads to learn how to get a token needs none.
    let metadata = json_of(s.get("metadata").await, 200).await;
    assert_eq!(
        metadata["rest"][0]["security"]["service"][0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );
    let configuration = s
        .get(".well-known/smart-configuration")
        .await
        .json::<Value>()
        .await
        .expect("JSON");
    assert_eq!(configuration["issuer"], ISSUER);
    assert!(configuration["token_endpoint"]
        .as_str()
        .is_some_and(|t| t.ends_with("/token")));

    let expired = claims(
        "system/*.*",
        json!({"exp": now() - 120, "nbf": now() - 600}),
    );
    refused(
        get_with(&s, "Patient", &sign(&rsa, &expired)).await,
        "expired",
    )
    .await;
    let early = claims(
        "system/*.*",
        json!({"nbf": now() + 600, "exp": now() + 900}),
    );
    refused(
        get_with(&s, "Patient", &sign(&rsa, &early)).await,
        "not valid yet",
    )
    .await;
    let elsewhere = claims("system/*.*", json!({"iss": "https://other.example"}));
    refused(
        get_with(&s, "Patient", &sign(&ec, &elsewhere)).await,
        "issuer",
    )
    .await;
    let other_server = claims("system/*.*", json!({"aud": "https://other.example/fhir"}));
    refused(
        get_with(&s, "Patient", &sign(&rsa, &other_server)).await,
        "aud",
    )
    .await;
    // Signed by a key the issuer does not publish, claiming a published kid.
    let mut impostor = rsa_key("rsa-1");
    impostor.kid = "rsa-1".to_owned();
    refused(
        get_with(&s, "Patient", &sign(&impostor, &all)).await,
        "signature",
    )
    .await;
    // A kid the issuer does not have (the JWKS is fetched again, in vain).
    let stranger = ec_key("ec-unknown");
    refused(
        get_with(&s, "Patient", &sign(&stranger, &all)).await,
        "not among",
    )
    .await;
    // `alg: none`, unsigned.
    let unsigned = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(all.to_string().as_bytes())
    );
    refused(get_with(&s, "Patient", &unsigned).await, "well-formed").await;
    // A shared-secret signature (HS256): not a server's key.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("rsa-1".to_owned());
    let hmac =
        jsonwebtoken::encode(&header, &all, &EncodingKey::from_secret(b"secret")).expect("sign");
    refused(get_with(&s, "Patient", &hmac).await, "not accepted").await;
    // A valid token whose claims were changed after signing.
    let token = sign(&rsa, &claims("patient/Patient.r", json!({"patient": "p1"})));
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(all.to_string().as_bytes()),
        parts[2]
    );
    refused(get_with(&s, "Patient", &tampered).await, "signature").await;
    // Not a bearer token at all.
    let basic = s
        .http
        .get(s.url("Patient"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .expect("GET");
    refused(basic, "Bearer").await;
}

#[tokio::test]
async fn scopes_limit_types_and_interactions() {
    let (s, rsa, _) = smart_server().await;
    let admin = sign(&rsa, &claims("system/*.*", json!({})));
    let patient = json!({"resourceType": "Patient", "id": "sc-1", "name": [{"family": "Vialle"}]});
    json_of(
        send_with(&s, reqwest::Method::PUT, "Patient/sc-1", &admin, &patient).await,
        201,
    )
    .await;
    let encounter = json!({"resourceType": "Encounter", "id": "sc-e1", "status": "finished",
        "class": {"code": "AMB"}, "subject": {"reference": "Patient/sc-1"}});
    json_of(
        send_with(
            &s,
            reqwest::Method::PUT,
            "Encounter/sc-e1",
            &admin,
            &encounter,
        )
        .await,
        201,
    )
    .await;

    // v1 read of Patients only, as a backend service (a practitioner's app is
    // held to her care circles besides: see below).
    let reader = sign(&rsa, &claims("system/Patient.read", json!({})));
    json_of(get_with(&s, "Patient/sc-1", &reader).await, 200).await;
    json_of(get_with(&s, "Patient?family=Vialle", &reader).await, 200).await;
    for (path, what) in [
        ("Encounter/sc-e1", "'r' on Encounter"),
        ("Encounter?subject=Patient/sc-1", "'s' on Encounter"),
        ("Patient?_revinclude=Encounter:subject", "'r' on Encounter"),
        (
            "Patient?_has:Encounter:subject:status=finished",
            "'s' on Encounter",
        ),
        ("_history", "'s' on *"),
    ] {
        let denied = outcome_of(get_with(&s, path, &reader).await, 403).await;
        assert!(denied.to_string().contains(what), "{path}: {denied}");
    }
    let write = send_with(&s, reqwest::Method::PUT, "Patient/sc-1", &reader, &patient).await;
    outcome_of(write, 403).await;

    // v2: create and search Encounters, nothing else.
    let writer = sign(&rsa, &claims("system/Encounter.cs", json!({})));
    let new = json!({"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"}});
    json_of(
        send_with(&s, reqwest::Method::POST, "Encounter", &writer, &new).await,
        201,
    )
    .await;
    outcome_of(get_with(&s, "Encounter/sc-e1", &writer).await, 403).await;
    let search = json_of(get_with(&s, "Encounter?status=planned", &writer).await, 200).await;
    assert_eq!(search["total"], 1);

    // Bundles: each entry held against the scopes; a transaction with one entry
    // refused writes nothing, a batch answers that entry alone.
    let entries = json!([
        {"resource": {"resourceType": "Encounter", "status": "planned", "class": {"code": "AMB"}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"resource": {"resourceType": "Patient", "name": [{"family": "Refusé"}]},
         "request": {"method": "POST", "url": "Patient"}}]);
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let refused = send_with(&s, reqwest::Method::POST, "", &writer, &transaction).await;
    let outcome = outcome_of(refused, 403).await;
    assert!(outcome.to_string().contains("Bundle.entry[1]"), "{outcome}");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let answered = json_of(
        send_with(&s, reqwest::Method::POST, "", &writer, &batch).await,
        200,
    )
    .await;
    assert_eq!(answered["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(answered["entry"][1]["response"]["status"], "403");
    let planned = json_of(get_with(&s, "Encounter?status=planned", &writer).await, 200).await;
    assert_eq!(planned["total"], 2);
    let refused = json_of(get_with(&s, "Patient?family=Refusé", &admin).await, 200).await;
    assert_eq!(refused["total"], 0);
}

#[tokio::test]
async fn a_patient_token_sees_the_patients_record_and_nothing_else() {
    let (s, rsa, _) = smart_server().await;
    let admin = sign(&rsa, &claims("system/*.*", json!({})));
    let category = |code: &str| json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": code}]}]);
    let mut resources =
        vec![json!({"resourceType": "Practitioner", "id": "pt-dr", "name": [{"family": "Mas"}]})];
    for p in ["pt-1", "pt-2"] {
        resources.push(json!({"resourceType": "Patient", "id": p}));
        resources.push(
            json!({"resourceType": "Encounter", "id": format!("{p}-stay"), "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{p}")}}),
        );
        for code in ["laboratory", "vital-signs"] {
            resources.push(json!({"resourceType": "Observation", "id": format!("{p}-{code}"), "status": "final",
                "category": category(code), "code": {"text": code},
                "subject": {"reference": format!("Patient/{p}")}}));
        }
    }
    for r in &resources {
        let path = format!(
            "{}/{}",
            r["resourceType"].as_str().expect("type"),
            r["id"].as_str().expect("id")
        );
        json_of(
            send_with(&s, reqwest::Method::PUT, &path, &admin, r).await,
            201,
        )
        .await;
    }
    let app = sign(
        &rsa,
        &claims(
            "launch/patient patient/*.rs patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            json!({"patient": "pt-1"}),
        ),
    );
    let ids = ids_of;
    let encounters = json_of(get_with(&s, "Encounter", &app).await, 200).await;
    assert_eq!(ids(&encounters), ["pt-1-stay"]);
    assert_eq!(encounters["total"], 1);
    json_of(get_with(&s, "Encounter/pt-1-stay", &app).await, 200).await;
    json_of(get_with(&s, "Patient/pt-1", &app).await, 200).await;
    json_of(get_with(&s, "Patient/pt-1/$everything", &app).await, 200).await;
    json_of(get_with(&s, "Patient/pt-1/Encounter", &app).await, 200).await;
    // The other patient's record does not exist for this token.
    for path in [
        "Encounter/pt-2-stay",
        "Encounter/pt-2-stay/_history",
        "Patient/pt-2",
        "Patient/pt-2/$everything",
        "Patient/pt-2/Encounter",
        "Patient/pt-2/$care-circle",
        "Observation/pt-2-laboratory",
    ] {
        outcome_of(get_with(&s, path, &app).await, 404).await;
    }
    let patients = json_of(get_with(&s, "Patient", &app).await, 200).await;
    assert_eq!(ids(&patients), ["pt-1"]);
    // Her export, at the system level too, is her record.
    let (_, manifest) = export_with(&s, &app, "$export").await;
    let exported = exported_ids(&s, &app, &manifest).await;
    for mine in [
        "Encounter/pt-1-stay",
        "Observation/pt-1-laboratory",
        "Observation/pt-1-vital-signs",
        "Patient/pt-1",
    ] {
        assert!(exported.iter().any(|e| e == mine), "{mine} in {exported:?}");
    }
    assert!(
        !exported
            .iter()
            .any(|e| e.contains("pt-2") || e.contains("pt-dr")),
        "{exported:?}"
    );
    // Directory data is not the patient's record.
    let practitioners = json_of(get_with(&s, "Practitioner", &app).await, 200).await;
    assert_eq!(ids(&practitioners), ["pt-dr"]);
    // Observations: the patient's, of both categories (patient/*.rs is wider
    // than the restricted scope).
    let observations = json_of(get_with(&s, "Observation", &app).await, 200).await;
    assert_eq!(ids(&observations), ["pt-1-laboratory", "pt-1-vital-signs"]);
    // A restricted scope alone: the laboratory results only.
    let lab_only = sign(
        &rsa,
        &claims(
            "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            json!({"patient": "pt-1"}),
        ),
    );
    let labs = json_of(get_with(&s, "Observation", &lab_only).await, 200).await;
    assert_eq!(ids(&labs), ["pt-1-laboratory"]);
    outcome_of(
        get_with(&s, "Observation/pt-1-laboratory", &lab_only).await,
        403,
    )
    .await;
    // Chains and `_has` search through her record only.
    for (path, found) in [
        (
            "Patient?_has:Observation:subject:code:text=vital-signs",
            vec!["pt-1"],
        ),
        ("Encounter?subject:Patient._id=pt-1", vec!["pt-1-stay"]),
        ("Encounter?subject:Patient._id=pt-2", vec![]),
    ] {
        let bundle = json_of(get_with(&s, path, &app).await, 200).await;
        assert_eq!(ids(&bundle), found, "{path}: {bundle}");
    }
    // The history of every resource: her record's, and directory data.
    let history = json_of(get_with(&s, "_history", &app).await, 200).await;
    assert_eq!(
        crate::support::ids_in(&history),
        [
            "pt-1",
            "pt-1-laboratory",
            "pt-1-stay",
            "pt-1-vital-signs",
            "pt-dr"
        ],
        "{history}"
    );
    // What a directory search includes of records is hers only.
    let with_records = json_of(
        get_with(
            &s,
            "Practitioner?_revinclude=Encounter:participant&_revinclude=Observation:performer",
            &app,
        )
        .await,
        200,
    )
    .await;
    assert_eq!(ids(&with_records), ["pt-dr"], "{with_records}");
    let write = send_with(
        &s,
        reqwest::Method::PUT,
        "Patient/pt-1",
        &app,
        &json!({"resourceType": "Patient", "id": "pt-1"}),
    )
    .await;
    outcome_of(write, 403).await;
    // patient/ scopes without a patient in context grant nothing.
    let no_context = sign(&rsa, &claims("patient/*.rs", json!({})));
    outcome_of(get_with(&s, "Encounter", &no_context).await, 403).await;
}

/// Without PASSERELLE_AUTH the server refuses to listen beyond loopback, before
/// it touches the database.
#[test]
fn without_authentication_the_server_stays_on_loopback() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["serve"])
        .env("PASSERELLE_LISTEN", "0.0.0.0:0")
        .env_remove("PASSERELLE_AUTH")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("run passerelle");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PASSERELLE_AUTH=smart"), "{stderr}");
    let incomplete = std::process::Command::new(env!("CARGO_BIN_EXE_passerelle"))
        .args(["serve"])
        .env("PASSERELLE_AUTH", "smart")
        .env("PASSERELLE_AUTH_ISSUER", ISSUER)
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .expect("run passerelle");
    assert!(!incomplete.status.success());
    let stderr = String::from_utf8_lossy(&incomplete.stderr);
    assert!(stderr.contains("PASSERELLE_AUTH_AUDIENCE"), "{stderr}");
}

/// The ids of a searchset's matches, sorted.
fn ids_of(bundle: &Value) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "include")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

/// The care-circle policy: a practitioner's app (`user/` scopes, `fhirUser`)
/// sees a patient's record only while she, or one of her roles, is in the
/// patient's care circle; directory data always. Joining the circle (a CareTeam
/// write) opens the record, leaving it closes it.
#[tokio::test]
async fn a_practitioner_sees_the_records_of_her_care_circle_only() {
    let (s, rsa, _) = smart_server().await;
    let admin = sign(&rsa, &claims("system/*.*", json!({})));
    let put = |resource: Value| {
        let admin = admin.clone();
        let s = &s;
        async move { put_with(s, &admin, &resource).await }
    };
    for id in ["cc-gp", "cc-outsider", "cc-nurse"] {
        put(json!({"resourceType": "Practitioner", "id": id})).await;
    }
    put(
        json!({"resourceType": "PractitionerRole", "id": "cc-nurse-role",
        "practitioner": {"reference": "Practitioner/cc-nurse"}}),
    )
    .await;
    put(json!({"resourceType": "Patient", "id": "cc-a", "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "2700100000001"}],
        "generalPractitioner": [{"reference": "Practitioner/cc-gp"}]}))
    .await;
    put(json!({"resourceType": "Patient", "id": "cc-b"})).await;
    for p in ["cc-a", "cc-b"] {
        put(
            json!({"resourceType": "Encounter", "id": format!("{p}-visit"), "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
        put(
            json!({"resourceType": "Observation", "id": format!("{p}-obs"), "status": "final",
            "code": {"text": "Poids"}, "subject": {"reference": format!("Patient/{p}")}}),
        )
        .await;
    }
    put(
        json!({"resourceType": "CareTeam", "id": "cc-b-home", "status": "active",
        "subject": {"reference": "Patient/cc-b"},
        "participant": [{"member": {"reference": "PractitionerRole/cc-nurse-role"}}]}),
    )
    .await;
    let token = |who: &str| {
        sign(
            &rsa,
            &claims(
                "openid fhirUser user/*.cruds",
                json!({"fhirUser": format!("Practitioner/{who}")}),
            ),
        )
    };
    let (gp, nurse, outsider) = (token("cc-gp"), token("cc-nurse"), token("cc-outsider"));

    // The GP: her patient's record, not the other's; the directory whole.
    json_of(get_with(&s, "Patient/cc-a", &gp).await, 200).await;
    outcome_of(get_with(&s, "Patient/cc-b", &gp).await, 404).await;
    let seen = json_of(get_with(&s, "Encounter", &gp).await, 200).await;
    assert_eq!(ids_of(&seen), ["cc-a-visit"]);
    assert_eq!(seen["total"], 1);
    let directory = json_of(get_with(&s, "Practitioner", &gp).await, 200).await;
    assert_eq!(directory["total"], 3);
    // The nurse, through her role in the other patient's home team.
    json_of(get_with(&s, "Patient/cc-b", &nurse).await, 200).await;
    let seen = json_of(get_with(&s, "Observation", &nurse).await, 200).await;
    assert_eq!(ids_of(&seen), ["cc-b-obs"]);
    outcome_of(get_with(&s, "Observation/cc-a-obs", &nurse).await, 404).await;

    // Someone in no circle: nothing of either patient, by any path.
    let hidden = [
        "Patient/cc-a",
        "Patient/cc-b",
        "Patient/cc-a/_history",
        "Patient/cc-a/_history/1",
        "Encounter/cc-a-visit",
        "Observation/cc-b-obs",
        "Patient/cc-a/$everything",
        "Encounter/cc-a-visit/$everything",
        "Patient/cc-a/Encounter",
        "Patient/cc-b/$care-circle",
    ];
    for path in hidden {
        outcome_of(get_with(&s, path, &outsider).await, 404).await;
    }
    let empty = [
        "Patient",
        "Encounter",
        "Observation",
        "CareTeam",
        "Patient?_id=cc-a",
        "Patient?identifier=urn:oid:1.2.250.1.213.1.4.10|2700100000001",
        "Encounter?subject=Patient/cc-a",
        "Observation?patient=cc-b",
        "Encounter?status=finished",
        "Observation?code:text=Poids",
        "Encounter?_include=Encounter:subject",
        "Patient?_revinclude=Observation:subject",
        "Practitioner?_revinclude=Patient:general-practitioner",
    ];
    for path in empty {
        let found = json_of(get_with(&s, path, &outsider).await, 200).await;
        let records: Vec<&Value> = found["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["resource"]["resourceType"] != "Practitioner")
            .collect();
        assert!(records.is_empty(), "{path}: {found}");
        if !path.starts_with("Practitioner") {
            assert_eq!(found["total"], 0, "{path}: {found}");
        }
    }
    // The history of every resource: nothing of the two patients' records.
    let history = json_of(get_with(&s, "_history", &outsider).await, 200).await;
    for id in crate::support::ids_in(&history) {
        assert!(
            !id.starts_with("cc-a") && !id.starts_with("cc-b"),
            "{id}: {history}"
        );
    }
    // Chains and `_has` search only through the records she reaches: nothing
    // tells her who the other patient's GP is, nor whose record has a weight.
    for path in [
        "Encounter?subject:Patient.name=x",
        "Observation?subject:Patient.identifier=urn:oid:1.2.250.1.213.1.4.10|2700100000001",
        "Practitioner?_has:Patient:general-practitioner:_id=cc-a",
        "Practitioner?_id=cc-gp&_has:Patient:general-practitioner:identifier=2700100000001",
        "Patient?_has:Observation:subject:code:text=Poids",
    ] {
        let found = json_of(get_with(&s, path, &outsider).await, 200).await;
        assert_eq!(found["total"], 0, "{path}: {found}");
    }
    outcome_of(
        get_with(
            &s,
            "Patient/cc-a/Encounter?subject:Patient.name=x",
            &outsider,
        )
        .await,
        404,
    )
    .await;
    // Through her own records, the same searches find what she sees.
    let through = [
        (
            &gp,
            "Practitioner?_has:Patient:general-practitioner:_id=cc-a",
            "cc-gp",
        ),
        (
            &gp,
            "Encounter?subject:Patient.identifier=urn:oid:1.2.250.1.213.1.4.10|2700100000001",
            "cc-a-visit",
        ),
        (
            &gp,
            "Patient/cc-a/Encounter?subject:Patient._id=cc-a",
            "cc-a-visit",
        ),
        (
            &nurse,
            "Patient?_has:Observation:subject:code:text=Poids",
            "cc-b",
        ),
    ];
    for (token, path, id) in through {
        let found = json_of(get_with(&s, path, token).await, 200).await;
        assert_eq!(ids_of(&found), [id], "{path}: {found}");
    }
    let get_entry = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/cc-a"}}]});
    let answered = json_of(
        send_with(&s, reqwest::Method::POST, "", &outsider, &get_entry).await,
        200,
    )
    .await;
    assert_eq!(answered["entry"][0]["response"]["status"], "404");
    // Nor write it: a record it cannot see does not exist; a new one about a
    // patient outside its circles is refused.
    let visit = json!({"resourceType": "Encounter", "id": "cc-a-visit", "status": "cancelled",
        "class": {"code": "AMB"}, "subject": {"reference": "Patient/cc-a"}});
    let update = send_with(
        &s,
        reqwest::Method::PUT,
        "Encounter/cc-a-visit",
        &outsider,
        &visit,
    )
    .await;
    outcome_of(update, 404).await;
    let delete = s
        .http
        .delete(s.url("Observation/cc-a-obs"))
        .bearer_auth(&outsider)
        .send()
        .await
        .expect("DELETE");
    outcome_of(delete, 404).await;
    let note = |p: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "Note"},
            "subject": {"reference": format!("Patient/{p}")}})
    };
    let create = send_with(
        &s,
        reqwest::Method::POST,
        "Observation",
        &outsider,
        &note("cc-a"),
    )
    .await;
    outcome_of(create, 403).await;
    // The GP writes about her patient, not about the other.
    json_of(
        send_with(&s, reqwest::Method::POST, "Observation", &gp, &note("cc-a")).await,
        201,
    )
    .await;
    let create = send_with(&s, reqwest::Method::POST, "Observation", &gp, &note("cc-b")).await;
    outcome_of(create, 403).await;

    // Joining the patient's circle opens the record; leaving it closes it.
    let team = |end: Option<&str>| {
        let mut participant = json!({"member": {"reference": "Practitioner/cc-outsider"},
            "period": {"start": "2026-01-01"}});
        if let Some(end) = end {
            participant["period"]["end"] = json!(end);
        }
        json!({"resourceType": "CareTeam", "id": "cc-a-ward", "status": "active",
            "subject": {"reference": "Patient/cc-a"}, "participant": [participant]})
    };
    put(team(None)).await;
    json_of(get_with(&s, "Patient/cc-a", &outsider).await, 200).await;
    let seen = json_of(get_with(&s, "Encounter", &outsider).await, 200).await;
    assert_eq!(ids_of(&seen), ["cc-a-visit"]);
    put(team(Some("2026-02-01"))).await;
    outcome_of(get_with(&s, "Patient/cc-a", &outsider).await, 404).await;
    let seen = json_of(get_with(&s, "Encounter", &outsider).await, 200).await;
    assert_eq!(seen["total"], 0);

    // user/ scopes with no one named: nothing of any record.
    let nobody = sign(&rsa, &claims("user/*.rs", json!({})));
    outcome_of(get_with(&s, "Patient/cc-a", &nobody).await, 403).await;
}

/// Transaction and batch entries of a practitioner's app are held as her REST
/// requests are, each against what the entries before it wrote: her patients'
/// records read, searched and written; another patient's neither seen nor
/// written, and a transaction that tries writes nothing.
#[tokio::test]
async fn a_practitioners_bundles_are_held_entry_by_entry() {
    let (s, rsa, _) = smart_server().await;
    let admin = sign(&rsa, &claims("system/*.*", json!({})));
    for resource in [
        json!({"resourceType": "Practitioner", "id": "hb-gp"}),
        json!({"resourceType": "Patient", "id": "hb-mine",
            "generalPractitioner": [{"reference": "Practitioner/hb-gp"}]}),
        json!({"resourceType": "Patient", "id": "hb-other"}),
        json!({"resourceType": "Encounter", "id": "hb-mine-visit", "status": "in-progress",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient/hb-mine"}}),
        json!({"resourceType": "Encounter", "id": "hb-other-visit", "status": "in-progress",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient/hb-other"}}),
    ] {
        put_with(&s, &admin, &resource).await;
    }
    let gp = sign(
        &rsa,
        &claims(
            "openid fhirUser user/*.cruds",
            json!({"fhirUser": "Practitioner/hb-gp"}),
        ),
    );
    let post = |bundle: Value| {
        let (s, gp) = (&s, gp.clone());
        async move { send_with(s, reqwest::Method::POST, "", &gp, &bundle).await }
    };
    let note = |patient: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "Note HB"},
            "subject": {"reference": patient}})
    };
    let visit = |id: &str, patient: &str| {
        json!({"resourceType": "Encounter", "id": id, "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": format!("Patient/{patient}")}})
    };

    // Her patient's record, and a new patient of hers with a first visit that
    // refers to her by fullUrl: written, read and searched in one transaction.
    let mine = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": note("Patient/hb-mine"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": visit("hb-mine-visit", "hb-mine"),
         "request": {"method": "PUT", "url": "Encounter/hb-mine-visit"}},
        {"fullUrl": "urn:uuid:3f1c2a9e-0c2b-4d43-9a55-6a1f0f7e0001",
         "resource": {"resourceType": "Patient", "generalPractitioner": [{"reference": "Practitioner/hb-gp"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": note("urn:uuid:3f1c2a9e-0c2b-4d43-9a55-6a1f0f7e0001"),
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Patient/hb-mine"}},
        {"request": {"method": "GET", "url": "Encounter"}}]});
    let done = json_of(post(mine).await, 200).await;
    let statuses: Vec<&str> = done["entry"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        [
            "201 Created",
            "200 OK",
            "201 Created",
            "201 Created",
            "200 OK",
            "200 OK"
        ]
    );
    let searched = &done["entry"][5]["resource"];
    assert_eq!(searched["total"], 1, "{searched}");
    assert_eq!(searched["entry"][0]["resource"]["id"], "hb-mine-visit");
    // A conditional update matching nothing creates under the id its fullUrl
    // stands for, as by REST (it names no id of its own).
    let mut follow_up = visit("unused", "hb-mine");
    follow_up.as_object_mut().map(|v| v.remove("id"));
    follow_up["identifier"] = json!([{"system": "urn:example:visit", "value": "hb-follow-up"}]);
    let conditional = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:3f1c2a9e-0c2b-4d43-9a55-6a1f0f7e0002", "resource": follow_up,
         "request": {"method": "PUT", "url": "Encounter?identifier=urn:example:visit|hb-follow-up"}}]});
    let done = json_of(post(conditional).await, 200).await;
    assert_eq!(
        done["entry"][0]["response"]["status"], "201 Created",
        "{done}"
    );

    // The other patient: each way in fails the whole transaction, 404 where her
    // record's existence is not hers to know, 403 where the content says whom it
    // is about; nothing of the transaction is written.
    let first = json!({"resource": note("Patient/hb-mine"),
        "request": {"method": "POST", "url": "Observation"}});
    for (entry, status) in [
        (
            json!({"resource": note("Patient/hb-other"),
            "request": {"method": "POST", "url": "Observation"}}),
            403,
        ),
        (
            json!({"resource": visit("hb-other-visit", "hb-other"),
            "request": {"method": "PUT", "url": "Encounter/hb-other-visit"}}),
            404,
        ),
        (
            json!({"request": {"method": "DELETE", "url": "Encounter/hb-other-visit"}}),
            404,
        ),
        (
            json!({"request": {"method": "GET", "url": "Patient/hb-other"}}),
            404,
        ),
        (
            json!({"request": {"method": "GET", "url": "Encounter/hb-other-visit/_history/1"}}),
            404,
        ),
        // Her own visit moved to the other patient.
        (
            json!({"resource": visit("hb-mine-visit", "hb-other"),
            "request": {"method": "PUT", "url": "Encounter/hb-mine-visit"}}),
            403,
        ),
        // Joining the other patient's circle by writing its team.
        (
            json!({"resource": {"resourceType": "CareTeam", "status": "active",
            "subject": {"reference": "Patient/hb-other"},
            "participant": [{"member": {"reference": "Practitioner/hb-gp"}}]},
            "request": {"method": "POST", "url": "CareTeam"}}),
            403,
        ),
        // A conditional reference matches among what she sees: as if absent.
        (
            json!({"resource": note("Patient?_id=hb-other"),
            "request": {"method": "POST", "url": "Observation"}}),
            412,
        ),
    ] {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction",
            "entry": [first.clone(), entry.clone()]});
        let refused = outcome_of(post(bundle).await, status).await;
        assert!(
            refused.to_string().contains("Bundle.entry[1]"),
            "{entry}: {refused}"
        );
    }
    let notes = json_of(
        get_with(&s, "Observation?code:text=Note HB&_total=accurate", &admin).await,
        200,
    )
    .await;
    assert_eq!(
        notes["total"], 2,
        "only the first transaction's notes: {notes}"
    );
    let other = json_of(get_with(&s, "Encounter/hb-other-visit", &admin).await, 200).await;
    assert_eq!(other["status"], "in-progress");
    assert_eq!(
        json_of(
            get_with(&s, "CareTeam?subject=Patient/hb-other", &admin).await,
            200
        )
        .await["total"],
        0
    );

    // A batch answers each entry on its own: hers done, the other's refused;
    // a search sees her records only; a conditional delete of the other's
    // stay matches nothing.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": note("Patient/hb-mine"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": note("Patient/hb-other"), "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "GET", "url": "Encounter/hb-other-visit"}},
        {"request": {"method": "GET", "url": "Encounter?_include=Encounter:subject"}},
        {"request": {"method": "DELETE", "url": "Encounter?_id=hb-other-visit"}}]});
    let answered = json_of(post(batch).await, 200).await;
    let status = |i: usize| answered["entry"][i]["response"]["status"].clone();
    assert_eq!(
        [status(0), status(1), status(2), status(3), status(4)],
        [
            json!("201 Created"),
            json!("403"),
            json!("404"),
            json!("200 OK"),
            json!("204 No Content")
        ]
    );
    json_of(get_with(&s, "Encounter/hb-other-visit", &admin).await, 200).await;
    let searched = &answered["entry"][3]["resource"];
    let mut seen: Vec<String> = crate::support::ids_in(searched);
    seen.sort();
    assert!(
        !seen.iter().any(|id| id.starts_with("hb-other")),
        "{searched}"
    );
    assert!(seen.contains(&"hb-mine-visit".to_owned()), "{searched}");
}

/// The subtypes and statuses of an audit search, newest first.
fn audited(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let event = &e["resource"];
            format!(
                "{} {}",
                event["subtype"][0]["code"].as_str().unwrap_or_default(),
                event["outcomeDesc"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Every access is recorded before it is answered, refusals included, and found
/// by patient, agent and action; the trail cannot be changed through the API;
/// breaking the glass opens a record outside one's circles, with its reason
/// recorded.
#[tokio::test]
async fn every_access_is_in_the_audit_trail() {
    let (s, rsa, _) = smart_server().await;
    let admin = sign(&rsa, &claims("system/*.*", json!({})));
    for resource in [
        json!({"resourceType": "Practitioner", "id": "au-gp"}),
        json!({"resourceType": "Practitioner", "id": "au-er"}),
        json!({"resourceType": "Patient", "id": "au-p", "generalPractitioner": [{"reference": "Practitioner/au-gp"}]}),
    ] {
        let path = format!(
            "{}/{}",
            resource["resourceType"].as_str().expect("type"),
            resource["id"].as_str().expect("id")
        );
        json_of(
            send_with(&s, reqwest::Method::PUT, &path, &admin, &resource).await,
            201,
        )
        .await;
    }
    let user = |who: &str| {
        sign(
            &rsa,
            &claims(
                "user/*.cruds",
                json!({"fhirUser": format!("Practitioner/{who}")}),
            ),
        )
    };
    let (gp, er) = (user("au-gp"), user("au-er"));
    json_of(get_with(&s, "Patient/au-p", &gp).await, 200).await;
    json_of(
        get_with(&s, "Encounter?subject=Patient/au-p", &gp).await,
        200,
    )
    .await;
    let note = json!({"resourceType": "Observation", "status": "final", "code": {"text": "Note"},
        "subject": {"reference": "Patient/au-p"}});
    json_of(
        send_with(&s, reqwest::Method::POST, "Observation", &gp, &note).await,
        201,
    )
    .await;
    // The emergency physician is in no circle of this patient: 404, then she
    // breaks the glass with her reason.
    outcome_of(get_with(&s, "Patient/au-p", &er).await, 404).await;
    let glass = s
        .http
        .get(s.url("Patient/au-p"))
        .bearer_auth(&er)
        .header("x-break-glass", "Urgence vitale, patiente inconsciente")
        .send()
        .await
        .expect("GET");
    json_of(glass, 200).await;
    // Without a token: refused, and recorded.
    outcome_of(s.get("Patient/au-p").await, 401).await;

    let trail = json_of(
        get_with(&s, "AuditEvent?patient=au-p&_count=20", &admin).await,
        200,
    )
    .await;
    let events = audited(&trail);
    for expected in [
        "read HTTP 200",
        "search-type HTTP 200",
        "create HTTP 201",
        "read HTTP 404",
        "read HTTP 401",
    ] {
        assert!(
            events.contains(&expected.to_owned()),
            "{expected}: {events:?}"
        );
    }
    // By agent: the emergency physician's two reads, the glass broken with its
    // reason on the second.
    let hers = json_of(
        get_with(&s, "AuditEvent?agent=Practitioner/au-er", &admin).await,
        200,
    )
    .await;
    assert_eq!(audited(&hers), ["read HTTP 200", "read HTTP 404"]);
    let broken = &hers["entry"][0]["resource"];
    assert_eq!(broken["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
    assert_eq!(
        broken["purposeOfEvent"][0]["text"],
        "Urgence vitale, patiente inconsciente"
    );
    assert_eq!(broken["agent"][0]["who"]["reference"], "Practitioner/au-er");
    assert!(broken["agent"][0]["network"]["address"].is_string());
    let id = broken["id"].as_str().expect("id");
    let one = json_of(get_with(&s, &format!("AuditEvent/{id}"), &admin).await, 200).await;
    assert_eq!(one["action"], "R");
    // By action (the three PUTs of the set-up); pages newest first, with a next
    // link while there are more.
    let updates = json_of(
        get_with(&s, "AuditEvent?action=U&_count=2", &admin).await,
        200,
    )
    .await;
    assert_eq!(updates["entry"].as_array().map(Vec::len), Some(2));
    let next = updates["link"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["relation"] == "next"))
        .and_then(|l| l["url"].as_str())
        .expect("a next page")
        .to_owned();
    let rest = s
        .http
        .get(next)
        .bearer_auth(&admin)
        .send()
        .await
        .expect("GET");
    let rest = json_of(rest, 200).await;
    assert_eq!(rest["entry"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        rest["entry"][0]["resource"]["entity"][0]["what"]["reference"],
        "Practitioner/au-gp"
    );
    let erase = send_with(
        &s,
        reqwest::Method::PUT,
        &format!("AuditEvent/{id}"),
        &admin,
        &one,
    )
    .await;
    outcome_of(erase, 405).await;
    let delete = s
        .http
        .delete(s.url(&format!("AuditEvent/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("DELETE");
    outcome_of(delete, 405).await;
    outcome_of(get_with(&s, "AuditEvent?patient=au-p", &gp).await, 403).await;
    outcome_of(get_with(&s, "AuditEvent?name=x", &admin).await, 400).await;
}

#[tokio::test]
async fn a_subscription_tells_its_owner_only_what_she_may_see() {
    use crate::receiver::Receiver;
    use crate::subscriptions::r4_subscription;
    use std::time::Duration;
    let (s, rsa, _) = smart_server().await;
    let admin = sign(&rsa, &claims("system/*.*", json!({})));
    let write = |resource: Value| {
        let (admin, s) = (admin.clone(), &s);
        async move { put_with(s, &admin, &resource).await }
    };
    let observation = |id: &str, patient: &str| {
        json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"text": "Poids"}, "subject": {"reference": format!("Patient/{patient}")}})
    };
    write(json!({"resourceType": "Practitioner", "id": "owner-gp"})).await;
    write(json!({"resourceType": "Patient", "id": "owner-a",
        "generalPractitioner": [{"reference": "Practitioner/owner-gp"}]}))
    .await;
    write(json!({"resourceType": "Patient", "id": "owner-b"})).await;

    // The GP's app subscribes to every final Observation; a backend allowed to
    // read Patients only subscribes to the same.
    let (gp, backend) = (Receiver::start().await, Receiver::start().await);
    let gp_token = sign(
        &rsa,
        &claims(
            "openid fhirUser user/*.cruds",
            json!({"fhirUser": "Practitioner/owner-gp"}),
        ),
    );
    let narrow = sign(
        &rsa,
        &claims("system/Patient.read system/Subscription.cruds", json!({})),
    );
    let mut ids = Vec::new();
    for (token, receiver) in [(&gp_token, &gp), (&narrow, &backend)] {
        let subscription = r4_subscription("Observation?status=final", &receiver.url());
        let created = send_with(
            &s,
            reqwest::Method::POST,
            "Subscription",
            token,
            &subscription,
        );
        let created = json_of(created.await, 201).await;
        ids.push(created["id"].as_str().expect("id").to_owned());
    }
    // Hers is hers: a colleague neither reads it nor asks about it, nor finds it
    // by searching Subscriptions (she lists her own); a backend that reads
    // records sees them all.
    let colleague = sign(
        &rsa,
        &claims(
            "openid fhirUser user/*.cruds",
            json!({"fhirUser": "Practitioner/owner-colleague"}),
        ),
    );
    let hers = format!("Subscription/{}", ids[0]);
    assert_eq!(get_with(&s, &hers, &gp_token).await.status(), 200);
    assert_eq!(get_with(&s, &hers, &colleague).await.status(), 404);
    let status = format!("{hers}/$status");
    assert_eq!(get_with(&s, &status, &gp_token).await.status(), 200);
    assert_eq!(get_with(&s, &status, &colleague).await.status(), 404);
    let none = json_of(get_with(&s, "Subscription", &colleague).await, 200).await;
    assert_eq!(none["total"], 0, "{none}");
    for path in ["Subscription", "Subscription?status=requested,active"] {
        let mine = json_of(get_with(&s, path, &gp_token).await, 200).await;
        assert_eq!(ids_of(&mine), [ids[0].clone()], "{path}: {mine}");
        assert_eq!(mine["total"], 1, "{path}: {mine}");
    }
    // The same app for another user, or for another patient, is someone else.
    let same_app_other_user = sign(
        &rsa,
        &claims(
            "openid fhirUser user/*.cruds",
            json!({"fhirUser": "Practitioner/owner-gp", "sub": "someone-else"}),
        ),
    );
    let theirs = json_of(
        get_with(&s, "Subscription", &same_app_other_user).await,
        200,
    )
    .await;
    assert_eq!(theirs["total"], 0, "{theirs}");
    assert_eq!(
        get_with(&s, "Subscription/_history", &colleague)
            .await
            .status(),
        403
    );
    let all = json_of(get_with(&s, "Subscription", &admin).await, 200).await;
    assert_eq!(all["total"], 2);

    // Her patient's Observation reaches her; the other patient's does not, and
    // the backend is told of neither.
    write(observation("owner-a-1", "owner-a")).await;
    write(observation("owner-b-1", "owner-b")).await;
    assert_eq!(gp.expect().await.json()["id"], "owner-a-1");
    assert!(gp.next(Duration::from_millis(800)).await.is_none());
    assert!(backend.next(Duration::from_millis(200)).await.is_none());

    // A patient's app allowed her laboratory results only is told of those.
    let lab_app = Receiver::start().await;
    let labs_only = sign(
        &rsa,
        &claims(
            "launch/patient patient/Subscription.cruds patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
            json!({"patient": "owner-a"}),
        ),
    );
    let subscription = r4_subscription("Observation?status=final", &lab_app.url());
    let created = send_with(
        &s,
        reqwest::Method::POST,
        "Subscription",
        &labs_only,
        &subscription,
    );
    assert_eq!(created.await.status(), 201);
    for (id, category) in [
        ("owner-a-weight", "vital-signs"),
        ("owner-a-lab", "laboratory"),
    ] {
        let mut o = observation(id, "owner-a");
        o["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}]);
        write(o).await;
    }
    assert_eq!(lab_app.expect().await.json()["id"], "owner-a-lab");
    assert!(lab_app.next(Duration::from_millis(500)).await.is_none());
    assert_eq!(gp.expect().await.json()["id"], "owner-a-weight");
    assert_eq!(gp.expect().await.json()["id"], "owner-a-lab");

    // Once she is in the other patient's care team, that record reaches her too.
    write(
        json!({"resourceType": "CareTeam", "id": "owner-b-team", "status": "active",
        "subject": {"reference": "Patient/owner-b"},
        "participant": [{"member": {"reference": "Practitioner/owner-gp"}}]}),
    )
    .await;
    write(observation("owner-b-2", "owner-b")).await;
    assert_eq!(gp.expect().await.json()["id"], "owner-b-2");
    assert!(gp.next(Duration::from_millis(500)).await.is_none());
    assert!(backend.next(Duration::from_millis(100)).await.is_none());
}

#[tokio::test]
async fn a_backend_held_to_organisations_sees_their_patients_only() {
    let (s, rsa, _) = smart_server_holding("dac-75=Organization/dac-75").await;
    let admin = sign(&rsa, &claims("system/*.*", json!({})));
    for resource in [
        json!({"resourceType": "Organization", "id": "dac-75", "name": "DAC Paris"}),
        json!({"resourceType": "Organization", "id": "ehpad-1", "name": "EHPAD"}),
        // Followed by the DAC: its record is kept there.
        json!({"resourceType": "Patient", "id": "org-a",
            "managingOrganization": {"reference": "Organization/dac-75"}}),
        json!({"resourceType": "Patient", "id": "org-b",
            "managingOrganization": {"reference": "Organization/ehpad-1"}}),
        json!({"resourceType": "Encounter", "id": "org-a-stay", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient/org-a"}}),
        json!({"resourceType": "Encounter", "id": "org-b-stay", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient/org-b"}}),
    ] {
        put_with(&s, &admin, &resource).await;
    }
    let dac = sign(&rsa, &claims("system/*.rs", json!({"client_id": "dac-75"})));
    let other = sign(&rsa, &claims("system/*.rs", json!({"client_id": "dmp"})));
    let ids = |bundle: Value| ids_of(&bundle);
    // The DAC's client: its patient, her stay, the directory; the other
    // patient's record is as if it did not exist.
    let found = json_of(get_with(&s, "Encounter", &dac).await, 200).await;
    assert_eq!(ids(found.clone()), ["org-a-stay"]);
    assert_eq!(found["total"], 1);
    assert_eq!(
        ids(json_of(get_with(&s, "Patient", &dac).await, 200).await),
        ["org-a"]
    );
    assert_eq!(
        get_with(&s, "Encounter/org-a-stay", &dac).await.status(),
        200
    );
    assert_eq!(get_with(&s, "Patient/org-b", &dac).await.status(), 404);
    assert_eq!(
        get_with(&s, "Encounter/org-b-stay", &dac).await.status(),
        404
    );
    let directory = json_of(get_with(&s, "Organization", &dac).await, 200).await;
    assert_eq!(directory["total"], 2);
    // A client with no allow-list is held by its scopes only.
    let all = json_of(get_with(&s, "Encounter", &other).await, 200).await;
    assert_eq!(all["total"], 2);
    // Its export holds its patients' records only; another client does not see
    // the job, whose files are the DAC's.
    let (status_path, manifest) = export_with(&s, &dac, "$export").await;
    let exported = exported_ids(&s, &dac, &manifest).await;
    assert_eq!(exported, ["Encounter/org-a-stay", "Patient/org-a"]);
    assert_eq!(get_with(&s, &status_path, &other).await.status(), 404);
    let file = manifest["output"][0]["url"].as_str().expect("file url");
    let file_path = file.trim_start_matches(&s.base).trim_start_matches('/');
    assert_eq!(get_with(&s, file_path, &other).await.status(), 404);
    let (_, everything) = export_with(&s, &other, "$export").await;
    let exported = exported_ids(&s, &other, &everything).await;
    assert_eq!(exported.len(), 6, "{exported:?}");
    // The DAC joins the other patient's care team: her record opens to it.
    let team = json!({"resourceType": "CareTeam", "id": "org-b-team", "status": "active",
        "subject": {"reference": "Patient/org-b"},
        "participant": [{"member": {"reference": "Organization/dac-75"}}]});
    let status = send_with(
        &s,
        reqwest::Method::PUT,
        "CareTeam/org-b-team",
        &admin,
        &team,
    )
    .await
    .status();
    assert!(status.is_success());
    assert_eq!(
        get_with(&s, "Encounter/org-b-stay", &dac).await.status(),
        200
    );
}

#[tokio::test]
async fn the_ways_around_the_circle_are_closed() {
    let (s, rsa, _) = smart_server_holding("dac-75=Organization/dac-75").await;
    let admin = sign(&rsa, &claims("system/*.*", json!({})));
    for resource in [
        json!({"resourceType": "Practitioner", "id": "way-gp"}),
        json!({"resourceType": "Practitioner", "id": "way-cardio"}),
        json!({"resourceType": "PractitionerRole", "id": "way-cardio-role",
            "practitioner": {"reference": "Practitioner/way-cardio"}}),
        json!({"resourceType": "Patient", "id": "way-mine",
            "generalPractitioner": [{"reference": "Practitioner/way-gp"}]}),
        json!({"resourceType": "Patient", "id": "way-other",
            "generalPractitioner": [{"reference": "PractitionerRole/way-cardio-role"}]}),
        json!({"resourceType": "Group", "id": "way-group", "type": "person", "actual": true,
            "member": [{"entity": {"reference": "Patient/way-mine"}},
                       {"entity": {"reference": "Patient/way-other"}}]}),
        json!({"resourceType": "Encounter", "id": "way-other-stay", "status": "finished",
            "class": {"code": "AMB"}, "subject": {"reference": "Patient/way-other"}}),
        json!({"resourceType": "Task", "id": "way-other-task", "status": "requested",
            "intent": "order", "for": {"reference": "Patient/way-other"}}),
    ] {
        put_with(&s, &admin, &resource).await;
    }
    let gp = sign(
        &rsa,
        &claims(
            "openid fhirUser user/*.cruds",
            json!({"fhirUser": "Practitioner/way-gp"}),
        ),
    );
    let forbidden = |response: reqwest::Response, what: &'static str| async move {
        assert_eq!(response.status(), 403, "{what}");
    };
    // Tasks are a patient's record: not found, not created about her to join.
    let tasks = json_of(get_with(&s, "Task?patient=way-other", &gp).await, 200).await;
    assert_eq!(tasks["total"], 0);
    assert_eq!(get_with(&s, "Task/way-other-task", &gp).await.status(), 404);
    let join = json!({"resourceType": "Task", "status": "requested", "intent": "order",
        "for": {"reference": "Patient/way-other"}, "owner": {"reference": "Practitioner/way-gp"}});
    forbidden(
        send_with(&s, reqwest::Method::POST, "Task", &gp, &join).await,
        "Task to join",
    )
    .await;
    assert_eq!(
        get_with(&s, "Encounter/way-other-stay", &gp).await.status(),
        404
    );
    // Roles decide circles: she cannot take the cardiologist's.
    let taken = json!({"resourceType": "PractitionerRole", "id": "way-cardio-role",
        "practitioner": {"reference": "Practitioner/way-gp"}});
    forbidden(
        send_with(
            &s,
            reqwest::Method::PUT,
            "PractitionerRole/way-cardio-role",
            &gp,
            &taken,
        )
        .await,
        "role taken",
    )
    .await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": taken, "request": {"method": "PUT", "url": "PractitionerRole/way-cardio-role"}}]});
    forbidden(
        send_with(&s, reqwest::Method::POST, "", &gp, &bundle).await,
        "role in a Bundle",
    )
    .await;
    assert_eq!(
        get_with(&s, "Encounter/way-other-stay", &gp).await.status(),
        404
    );
    // Conditional writes match among what she sees: another patient's stay does
    // not exist for them (the same answer whether it exists or not).
    let conditional_create = |criteria: &'static str| {
        s.http
            .post(s.url("Encounter"))
            .bearer_auth(&gp)
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", criteria)
            .body(
                json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                "subject": {"reference": "Patient/way-mine"}})
                .to_string(),
            )
            .send()
    };
    let created = json_of(
        conditional_create("_id=way-other-stay")
            .await
            .expect("POST"),
        201,
    )
    .await;
    let mine = created["id"].as_str().expect("id").to_owned();
    assert_ne!(mine, "way-other-stay");
    let matched = json_of(
        conditional_create("subject=Patient/way-mine")
            .await
            .expect("POST"),
        200,
    )
    .await;
    assert_eq!(matched["id"], mine.as_str());
    let by_criteria = |method: reqwest::Method, query: &str| {
        s.http
            .request(method, s.url(&format!("Encounter?{query}")))
            .bearer_auth(&gp)
    };
    // A conditional delete of the other's stay matches nothing and deletes
    // nothing; a conditional update of it creates a stay of hers, under a new id.
    let deleted = by_criteria(reqwest::Method::DELETE, "_id=way-other-stay")
        .send()
        .await
        .expect("DELETE");
    assert!(deleted.status().is_success(), "{}", deleted.status());
    json_of(get_with(&s, "Encounter/way-other-stay", &admin).await, 200).await;
    let update = by_criteria(reqwest::Method::PUT, "subject=Patient/way-other")
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Encounter", "status": "cancelled", "class": {"code": "AMB"},
                "subject": {"reference": "Patient/way-mine"}})
            .to_string(),
        )
        .send()
        .await
        .expect("PUT");
    let update = json_of(update, 201).await;
    assert_ne!(update["id"], "way-other-stay");
    let other = json_of(get_with(&s, "Encounter/way-other-stay", &admin).await, 200).await;
    assert_eq!(other["status"], "finished");
    // Nor can a conditional update take another's id by naming it in its body.
    let taken = by_criteria(reqwest::Method::PUT, "_id=no-such-stay")
        .header("content-type", "application/fhir+json")
        .body(
            json!({"resourceType": "Encounter", "id": "way-other-stay", "status": "cancelled",
                "class": {"code": "AMB"}, "subject": {"reference": "Patient/way-mine"}})
            .to_string(),
        )
        .send()
        .await
        .expect("PUT");
    let taken = outcome_of(taken, 404).await;
    // Nor does an update of hers take a free id: were it free to take, 201 or
    // 404 would tell whether another's record holds it. The same answer either
    // way, the same text but for the id; she creates with POST.
    let put_stay = |id: &'static str| {
        s.http
            .put(s.url(&format!("Encounter/{id}")))
            .bearer_auth(&gp)
            .header("content-type", "application/fhir+json")
            .body(
                json!({"resourceType": "Encounter", "id": id, "status": "finished",
                    "class": {"code": "AMB"}, "subject": {"reference": "Patient/way-mine"}})
                .to_string(),
            )
            .send()
    };
    let free = outcome_of(put_stay("way-free-stay").await.expect("PUT"), 404).await;
    let held = outcome_of(put_stay("way-other-stay").await.expect("PUT"), 404).await;
    let text = |o: &Value, id: &str| o["issue"][0]["diagnostics"].to_string().replace(id, "…");
    assert_eq!(text(&free, "way-free-stay"), text(&held, "way-other-stay"));
    assert_eq!(
        text(&taken, "way-other-stay"),
        text(&held, "way-other-stay")
    );
    outcome_of(get_with(&s, "Encounter/way-free-stay", &admin).await, 404).await;
    // Her own stay, by criteria: patched.
    let patched = by_criteria(reqwest::Method::PATCH, &format!("_id={mine}"))
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/status", "value": "cancelled"}]).to_string())
        .send()
        .await
        .expect("PATCH");
    assert_eq!(json_of(patched, 200).await["status"], "cancelled");
    // A compartment search's includes are held the same way.
    let hers = json_of(
        get_with(&s, "Patient/way-mine/Group?_include=Group:member", &gp).await,
        200,
    )
    .await;
    assert_eq!(
        crate::support::ids_in(&hers),
        ["way-group", "way-mine"],
        "{hers}"
    );
    // A Group she sees brings her patient, not the other member.
    let group = json_of(get_with(&s, "Group?_include=Group:member", &gp).await, 200).await;
    assert_eq!(
        crate::support::ids_in(&group),
        ["way-group", "way-mine"],
        "{group}"
    );
    // `_include=Type:*` reaches every type: filtered the same way.
    let every = json_of(get_with(&s, "Group?_include=Group:*", &gp).await, 200).await;
    assert_eq!(
        crate::support::ids_in(&every),
        ["way-group", "way-mine"],
        "{every}"
    );
    // Break-the-glass opens one record, not a search, nor the audit trail.
    let glass = |path: &str| {
        s.http
            .get(s.url(path))
            .bearer_auth(&gp)
            .header("x-break-glass", "Urgence")
            .send()
    };
    let stays = json_of(glass("Encounter").await.expect("GET"), 200).await;
    // Her two, written above by criteria; not the other patient's.
    assert_eq!(stays["total"], 2, "{stays}");
    assert!(
        !crate::support::ids_in(&stays).contains(&"way-other-stay".to_owned()),
        "{stays}"
    );
    assert_eq!(glass("AuditEvent").await.expect("GET").status(), 403);
    assert_eq!(
        glass("Encounter/way-other-stay")
            .await
            .expect("GET")
            .status(),
        200
    );
    // Her patient's $everything does not bring the other member of a Group.
    let everything = json_of(get_with(&s, "Patient/way-mine/$everything", &gp).await, 200).await;
    let ids = crate::support::ids_in(&everything);
    assert!(ids.contains(&"way-mine".to_owned()), "{ids:?}");
    assert!(!ids.contains(&"way-other".to_owned()), "{ids:?}");
    // A resource once about another patient: its older version stays hers.
    let moved = |patient: &str| {
        json!({"resourceType": "Observation", "id": "way-moved", "status": "final",
            "code": {"text": "Poids"}, "subject": {"reference": format!("Patient/{patient}")}})
    };
    put_with(&s, &admin, &moved("way-other")).await;
    put_with(&s, &admin, &moved("way-mine")).await;
    assert_eq!(
        get_with(&s, "Observation/way-moved", &gp).await.status(),
        200
    );
    let older = get_with(&s, "Observation/way-moved/_history/1", &gp).await;
    assert_eq!(older.status(), 404);
    let versions = json_of(
        get_with(&s, "Observation/way-moved/_history", &gp).await,
        200,
    )
    .await;
    let entries = versions["entry"].as_array().cloned().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{versions}");
    assert_eq!(entries[0]["resource"]["meta"]["versionId"], "2");
    // PATCH: of her patient's record, yes; moving it to another patient, no.
    let patch = |ops: Value| {
        s.http
            .patch(s.url("Observation/way-moved"))
            .bearer_auth(&gp)
            .header("content-type", "application/json-patch+json")
            .body(ops.to_string())
            .send()
    };
    let noted = patch(json!([{"op": "replace", "path": "/status", "value": "amended"}]))
        .await
        .expect("PATCH");
    assert_eq!(json_of(noted, 200).await["status"], "amended");
    let away =
        json!([{"op": "replace", "path": "/subject/reference", "value": "Patient/way-other"}]);
    forbidden(
        patch(away).await.expect("PATCH"),
        "PATCH to another patient",
    )
    .await;
    let kept = json_of(get_with(&s, "Observation/way-moved", &admin).await, 200).await;
    assert_eq!(kept["subject"]["reference"], "Patient/way-mine");
    // A scope restricted by a search the server cannot apply is no scope.
    let odd = sign(
        &rsa,
        &claims("system/Encounter.rs?no-such-param=x", json!({})),
    );
    forbidden(
        get_with(&s, "Encounter", &odd).await,
        "unusable restriction",
    )
    .await;
    // A backend held to organisations writes no record through a Bundle.
    let dac = sign(
        &rsa,
        &claims("system/*.cruds", json!({"client_id": "dac-75"})),
    );
    let entry = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": "Patient/way-other"}},
         "request": {"method": "POST", "url": "Encounter"}}]});
    forbidden(
        send_with(&s, reqwest::Method::POST, "", &dac, &entry).await,
        "held Bundle",
    )
    .await;
}

#[tokio::test]
async fn the_issuer_out_of_reach_is_the_servers_trouble_not_the_tokens() {
    let rsa = rsa_key("rsa-1");
    let mut options = crate::support::test_options();
    // Nobody listens there.
    let jwks_url = format!("http://{}/certs", crate::receiver::free_address());
    options.auth = passerelle::auth::AuthSetting::Smart(passerelle::auth::SmartSettings {
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        jwks_url,
        authorize_url: None,
        token_url: None,
        client_organizations: Default::default(),
    });
    let s = TestServer::start_on(crate::support::fresh_database().await, options).await;
    let token = sign(&rsa, &claims("system/*.rs", json!({})));
    // Fetched and failed, then the failure said again without fetching.
    for _ in 0..2 {
        let response = get_with(&s, "Patient", &token).await;
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let outcome = outcome_of(response, 503).await;
        let text = outcome["issue"][0]["diagnostics"].to_string();
        assert!(text.contains("keys could not be fetched"), "{text}");
    }
}

//! Behind a reverse proxy: forwarding headers believed only from trusted
//! proxies, and two instances on one database behind a real nginx running
//! `deploy/nginx.conf` (reads, writes, searches and a websocket through it).

use std::time::Duration;

use serde_json::json;

use crate::nginx::{nginx, start_nginx};
use crate::support::{fresh_database, json_of, test_options, TestServer};
use passerelle::http::forwarded::TrustedProxies;

pub async fn server_trusting(config: tokio_postgres::Config, proxies: &str) -> TestServer {
    let mut options = test_options();
    options.trusted_proxies = TrustedProxies::parse(proxies).expect("proxies");
    TestServer::start_on(config, options).await
}

async fn create_through(
    http: &reqwest::Client,
    base: &str,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = http
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "name": [{"family": "Relais"}]}).to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("POST")
}

fn location(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_owned()
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let config = fresh_database().await;
    let behind = server_trusting(config.clone(), "127.0.0.1").await;
    let exposed = server_trusting(config, "10.9.9.9").await;
    let forwarded = [
        ("x-forwarded-proto", "https"),
        ("x-forwarded-host", "fhir.chu-tulle.fr"),
        ("x-forwarded-prefix", "/passerelle"),
    ];
    let resp = create_through(&behind.http, &behind.base, &forwarded).await;
    assert_eq!(resp.status(), 201);
    let at = location(&resp);
    assert!(
        at.starts_with("https://fhir.chu-tulle.fr/passerelle/fhir/Patient/"),
        "{at}"
    );
    let bundle = json_of(
        behind
            .http
            .get(behind.url("Patient?family=Relais"))
            .header("forwarded", "for=192.0.2.1;proto=https;host=dac.example.fr")
            .send()
            .await
            .expect("search"),
        200,
    )
    .await;
    let self_link = bundle["link"][0]["url"].as_str().unwrap_or_default();
    assert!(
        self_link.starts_with("https://dac.example.fr/fhir/Patient?"),
        "{self_link}"
    );
    assert!(bundle["entry"][0]["fullUrl"]
        .as_str()
        .is_some_and(|u| u.starts_with("https://dac.example.fr/fhir/Patient/")));

    let resp = create_through(&exposed.http, &exposed.base, &forwarded).await;
    let at = location(&resp);
    assert!(
        at.starts_with(&format!("{}/Patient/", exposed.base)),
        "headers of an untrusted peer are ignored: {at}"
    );
}

/// FHIR requests an instance answered, from its own metrics.
async fn requests_served(s: &TestServer) -> f64 {
    let root = s.base.trim_end_matches("/fhir");
    let text = s
        .http
        .get(format!("{root}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .filter(|l| l.starts_with("passerelle_http_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn two_instances_behind_nginx_serve_one_public_address() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let Some(binary) = nginx() else {
        return;
    };
    let config = fresh_database().await;
    let one = server_trusting(config.clone(), "127.0.0.1").await;
    let two = server_trusting(config, "127.0.0.1").await;
    let upstreams = [one.authority(), two.authority()];
    let proxy = start_nginx(&binary, &upstreams).await;
    let public = format!("http://127.0.0.1:{}/fhir", proxy.port);
    let http = reqwest::Client::new();

    // A client's own forwarding headers are replaced by the proxy's.
    let resp = create_through(&http, &public, &[("x-forwarded-host", "evil.example")]).await;
    assert_eq!(resp.status(), 201);
    let at = location(&resp);
    assert!(at.starts_with(&format!("{public}/Patient/")), "{at}");
    let id = at
        .trim_start_matches(&format!("{public}/Patient/"))
        .split('/')
        .next()
        .expect("id")
        .to_owned();

    // Every read, on either instance, sees the write.
    for _ in 0..10 {
        let patient = json_of(
            http.get(format!("{public}/Patient/{id}"))
                .send()
                .await
                .expect("read"),
            200,
        )
        .await;
        assert_eq!(patient["id"], id.as_str());
    }
    assert!(requests_served(&one).await >= 1.0, "instance one served");
    assert!(requests_served(&two).await >= 1.0, "instance two served");
    let bundle = json_of(
        http.get(format!("{public}/Patient?family=Relais"))
            .send()
            .await
            .expect("search"),
        200,
    )
    .await;
    assert_eq!(bundle["total"], 1);
    assert!(bundle["entry"][0]["fullUrl"]
        .as_str()
        .is_some_and(|u| u.starts_with(&public)));
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", proxy.port))
        .send()
        .await
        .expect("metrics through the proxy");
    assert_eq!(metrics.status(), 404, "metrics stay internal");

    // A websocket subscription bound through the proxy gets notifications of
    // writes made through it, whichever instance takes them.
    let subscription = json!({
        "resourceType": "Subscription", "status": "requested",
        "reason": "DAC", "criteria": "Patient?family=Relais",
        "channel": {"type": "websocket", "payload": "application/fhir+json"}
    });
    let created = json_of(
        http.post(format!("{public}/Subscription"))
            .header("content-type", "application/fhir+json")
            .body(subscription.to_string())
            .send()
            .await
            .expect("subscribe"),
        201,
    )
    .await;
    let sub_id = created["id"].as_str().expect("id");
    let token = json_of(
        http.get(format!(
            "{public}/Subscription/{sub_id}/$get-ws-binding-token"
        ))
        .send()
        .await
        .expect("token"),
        200,
    )
    .await;
    let value = |name: &str| -> String {
        token["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .and_then(|p| p.as_object())
            .and_then(|p| p.iter().find(|(k, _)| k.starts_with("value")))
            .and_then(|(_, v)| v.as_str())
            .expect("parameter")
            .to_owned()
    };
    let url = value("websocket-url");
    assert_eq!(
        url,
        format!("ws://127.0.0.1:{}/fhir/$websocket", proxy.port),
        "the websocket URL is the proxy's"
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("websocket through nginx");
    socket
        .send(Message::Text(
            format!("bind-with-token: {}", value("token")).into(),
        ))
        .await
        .expect("bind");
    let bound = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("an answer within 10 s")
        .expect("open")
        .expect("message");
    assert!(
        bound.to_text().expect("text").starts_with("bound"),
        "{bound}"
    );
    for _ in 0..4 {
        assert_eq!(create_through(&http, &public, &[]).await.status(), 201);
    }
    for n in 0..4 {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("notification {n} within 10 s"))
            .expect("open")
            .expect("message");
        let text = message.to_text().expect("text").to_owned();
        assert!(text.starts_with(&format!("ping {sub_id}")), "{text}");
    }

    // No instance left: the proxy answers as an instance would, in FHIR.
    drop(socket);
    drop((one, two));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gone = http
        .get(format!("{public}/Patient/{id}"))
        .send()
        .await
        .expect("read");
    assert_eq!(gone.status(), 503);
    assert_eq!(
        gone.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("5")
    );
    let outcome: serde_json::Value = gone.json().await.expect("an OperationOutcome");
    assert_eq!(outcome["issue"][0]["code"], "transient");
}

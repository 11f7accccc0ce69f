//! `GET /metrics`: what an operator scrapes, after real requests and real
//! deliveries (one taken, one refused by its endpoint).

use std::time::{Duration, Instant};

use serde_json::json;

use crate::receiver::Receiver;
use crate::subscriptions::r4_subscription;
use crate::support::{json_of, TestServer};

async fn scrape(s: &TestServer) -> (String, String) {
    let root = s.base.trim_end_matches("/fhir");
    let resp = s
        .http
        .get(format!("{root}/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200);
    let kind = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (kind, resp.text().await.expect("text"))
}

/// The value of the sample named exactly `sample` (name and labels).
fn value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_deliveries_and_the_outbox_backlog() {
    let s = TestServer::start().await;
    let taker = Receiver::start().await;
    let refuser = Receiver::start().await;
    refuser.answer_with(500);
    for endpoint in [taker.url(), refuser.url()] {
        json_of(
            s.post_json("Subscription", &r4_subscription("Patient?", &endpoint))
                .await,
            201,
        )
        .await;
    }
    let id = s
        .create(&json!({"resourceType": "Patient", "name": [{"family": "Compte"}]}))
        .await;
    json_of(s.get(&format!("Patient/{id}")).await, 200).await;
    assert_eq!(s.get("Patient/absent").await.status(), 404);
    taker.expect().await;

    // The refused notification is retried later: its event stays pending.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (kind, text) = scrape(&s).await;
        assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
        if value(&text, "passerelle_deliveries_total{outcome=\"failed\"}").is_some() {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no failed delivery counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at_least = |sample: &str, n: f64| {
        let v = value(&text, sample).unwrap_or_else(|| panic!("{sample} missing:\n{text}"));
        assert!(v >= n, "{sample} is {v}, expected at least {n}");
    };
    at_least(
        "passerelle_http_requests_total{interaction=\"read\",status=\"200\"}",
        1.0,
    );
    at_least(
        "passerelle_http_requests_total{interaction=\"read\",status=\"404\"}",
        1.0,
    );
    at_least(
        "passerelle_http_requests_total{interaction=\"create\",status=\"201\"}",
        3.0,
    );
    at_least(
        "passerelle_http_request_duration_seconds_count{interaction=\"create\"}",
        3.0,
    );
    at_least("passerelle_deliveries_total{outcome=\"delivered\"}", 1.0);
    at_least("passerelle_deliveries_total{outcome=\"failed\"}", 1.0);
    at_least("passerelle_delivery_duration_seconds_count", 2.0);
    at_least("passerelle_outbox_pending_events", 1.0);
    at_least("passerelle_outbox_oldest_pending_age_seconds", 0.0);
    at_least("passerelle_database_up", 1.0);
    at_least("passerelle_db_pool_connections{state=\"idle\"}", 0.0);
    at_least("passerelle_db_pool_waiting", 0.0);
    assert_eq!(
        value(
            &text,
            "passerelle_jobs{kind=\"escalation\",state=\"waiting\"}"
        ),
        Some(0.0),
        "{text}"
    );
}

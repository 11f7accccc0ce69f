//! Subscriptions end to end: real writes, a real listener, the real outbox.

use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::receiver::{free_address, Receiver};
use crate::support::{fresh_database, json_of, test_options, TestServer};

const BACKPORT: &str = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/";
const DISCHARGE: &str = "https://passerelle.example.fr/fhir/SubscriptionTopic/encounter-discharge";

pub fn r4_subscription(criteria: &str, endpoint: &str) -> Value {
    json!({
        "resourceType": "Subscription", "status": "requested",
        "reason": "Tell the GP about discharges",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint,
                    "payload": "application/fhir+json",
                    "header": ["Authorization: Bearer cabinet-42"]}
    })
}

pub fn backport_subscription(
    topic: &str,
    filter: Option<&str>,
    endpoint: &str,
    content: &str,
) -> Value {
    let mut s = json!({
        "resourceType": "Subscription", "status": "requested",
        "meta": {"profile": [format!("{BACKPORT}backport-subscription")]},
        "reason": "DAC: discharges of followed patients",
        "criteria": topic,
        "channel": {
            "extension": [{"url": format!("{BACKPORT}backport-max-count"), "valuePositiveInt": 10}],
            "type": "rest-hook", "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": format!("{BACKPORT}backport-payload-content"), "valueCode": content}]}
        }
    });
    if let Some(f) = filter {
        s["_criteria"] = json!({"extension": [{"url": format!("{BACKPORT}backport-filter-criteria"), "valueString": f}]});
    }
    s
}

pub fn encounter(id: &str, status: &str, patient: &str) -> Value {
    json!({
        "resourceType": "Encounter", "id": id, "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": format!("Patient/{patient}")}
    })
}

fn secret_of(subscription: &Value) -> String {
    subscription["extension"]
        .as_array()
        .and_then(|e| {
            e.iter().find(|x| {
                x["url"]
                    .as_str()
                    .is_some_and(|u| u.ends_with("subscription-secret"))
            })
        })
        .and_then(|x| x["valueString"].as_str())
        .expect("the server gives a signing secret")
        .to_owned()
}

fn hmac_hex(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Creates a subscription and returns its id.
async fn subscribe(s: &TestServer, subscription: &Value) -> String {
    let created = json_of(s.post_json("Subscription", subscription).await, 201).await;
    created["id"].as_str().expect("id").to_owned()
}

/// Event rows of `n` events, each delivered at the first attempt.
fn delivered_once(n: i64) -> Vec<(Option<i64>, String, i32)> {
    (1..=n)
        .map(|i| (Some(i), "delivered".to_owned(), 1))
        .collect()
}

async fn put(s: &TestServer, resource: &Value) -> Value {
    let path = format!(
        "{}/{}",
        resource["resourceType"].as_str().expect("type"),
        resource["id"].as_str().expect("id")
    );
    let resp = s.put_json(&path, resource).await;
    assert!(resp.status().is_success(), "PUT {path}: {}", resp.status());
    resp.json().await.expect("JSON")
}

async fn event_rows(s: &TestServer, sub_id: &str) -> Vec<(Option<i64>, String, i32)> {
    let client = s.pool.get().await.expect("connection");
    client
        .query(
            "SELECT event_number, status, attempts FROM subscription_event WHERE sub_id = $1 ORDER BY seq",
            &[&sub_id],
        )
        .await
        .expect("events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test]
async fn an_r4_rest_hook_gets_each_matching_write_signed_and_nothing_else() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    let created = json_of(
        s.post_json(
            "Subscription",
            &r4_subscription("Encounter?status=finished&class=IMP", &gp.url()),
        )
        .await,
        201,
    )
    .await;
    assert_eq!(created["status"], "active");
    let secret = secret_of(&created);
    let sub_id = created["id"].as_str().expect("id").to_owned();

    put(&s, &encounter("stay-1", "in-progress", "p1")).await;
    put(&s, &encounter("stay-1", "finished", "p1")).await;
    let first = gp.expect().await;
    assert_eq!(first.json()["id"], "stay-1");
    assert_eq!(first.json()["status"], "finished");
    assert_eq!(first.header("content-type"), Some("application/fhir+json"));
    assert_eq!(first.header("authorization"), Some("Bearer cabinet-42"));
    assert_eq!(
        first.header("x-passerelle-event-id"),
        Some(format!("{sub_id}/1").as_str())
    );
    let signature = first.header("x-passerelle-signature").expect("signed");
    assert_eq!(
        signature,
        format!("sha256={}", hmac_hex(&secret, &first.body))
    );

    // A non-matching write, then a matching one: only the latter arrives, number 2.
    put(&s, &encounter("stay-2", "in-progress", "p2")).await;
    put(&s, &encounter("stay-3", "finished", "p3")).await;
    let second = gp.expect().await;
    assert_eq!(second.json()["id"], "stay-3");
    assert_eq!(
        second.header("x-passerelle-event-id"),
        Some(format!("{sub_id}/2").as_str())
    );
    assert!(
        gp.next(Duration::from_millis(700)).await.is_none(),
        "nothing else"
    );
    let rows = event_rows(&s, &sub_id).await;
    assert_eq!(rows, delivered_once(2));
}

/// Whether `text` holds a signing secret anywhere.
fn shows_secret(text: &str) -> bool {
    text.contains("subscription-secret")
}

#[tokio::test]
async fn the_signing_secret_is_returned_to_its_creator_once_and_never_on_reads() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    let subscription = r4_subscription("Encounter?status=finished", &gp.url());
    let created = json_of(s.post_json("Subscription", &subscription).await, 201).await;
    let secret = secret_of(&created);
    let sub_id = created["id"].as_str().expect("id").to_owned();
    for path in [
        format!("Subscription/{sub_id}"),
        format!("Subscription/{sub_id}/_history/1"),
        format!("Subscription/{sub_id}/_history"),
        "Subscription?status=active".to_owned(),
        "_history".to_owned(),
    ] {
        let resp = s.get(&path).await;
        assert_eq!(resp.status(), 200, "{path}");
        let text = resp.text().await.expect("body");
        assert!(text.contains(&sub_id), "{path}: {text}");
        assert!(!shows_secret(&text), "{path} shows the secret: {text}");
    }
    // Written again without it (the reason changed), the secret is kept and not
    // shown: notifications are still signed with the first one.
    let mut again = created.clone();
    again["reason"] = json!("Discharges, for the practice's new software");
    again.as_object_mut().expect("object").remove("extension");
    let answer = s.put_json(&format!("Subscription/{sub_id}"), &again).await;
    assert_eq!(answer.status(), 200);
    assert!(!shows_secret(&answer.text().await.expect("body")));
    put(&s, &encounter("stay-1", "finished", "p1")).await;
    let sent = gp.expect().await;
    assert_eq!(
        sent.header("x-passerelle-signature"),
        Some(format!("sha256={}", hmac_hex(&secret, &sent.body)).as_str())
    );
    // A secret given by the subscriber replaces it, and is answered to that write.
    let mine = "a-secret-the-practice-chose";
    again["extension"] = json!([{
        "url": "https://passerelle.example.fr/fhir/StructureDefinition/subscription-secret",
        "valueString": mine
    }]);
    let answer = json_of(
        s.put_json(&format!("Subscription/{sub_id}"), &again).await,
        200,
    )
    .await;
    assert_eq!(secret_of(&answer), mine);
    let read = json_of(s.get(&format!("Subscription/{sub_id}")).await, 200).await;
    assert!(!shows_secret(&read.to_string()));
    put(&s, &encounter("stay-2", "finished", "p2")).await;
    let sent = gp.expect().await;
    assert_eq!(
        sent.header("x-passerelle-signature"),
        Some(format!("sha256={}", hmac_hex(mine, &sent.body)).as_str())
    );
}

#[tokio::test]
async fn a_rolled_back_transaction_records_no_event() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    let sub_id = subscribe(&s, &r4_subscription("Encounter?status=finished", &gp.url())).await;
    // The second entry expects a version that does not exist: all or nothing.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": encounter("stay-9", "finished", "p9"), "request": {"method": "PUT", "url": "Encounter/stay-9"}},
        {"resource": {"resourceType": "Patient", "id": "p9"},
         "request": {"method": "PUT", "url": "Patient/p9", "ifMatch": "W/\"7\""}}
    ]});
    let resp = s.post_json("", &bundle).await;
    assert_eq!(resp.status(), 412);
    assert!(gp.next(Duration::from_millis(800)).await.is_none());
    assert!(
        event_rows(&s, &sub_id).await.is_empty(),
        "no event without the write"
    );
}

#[tokio::test]
async fn a_backport_subscription_shakes_hands_then_batches_numbered_events() {
    let s = TestServer::start().await;
    let dac = Receiver::start().await;
    let sub_id = subscribe(
        &s,
        &backport_subscription(
            DISCHARGE,
            Some("Encounter?patient=Patient/p1"),
            &dac.url(),
            "full-resource",
        ),
    )
    .await;
    let handshake = dac.expect().await;
    assert_eq!(handshake.notification_type(), "handshake");
    assert_eq!(handshake.json()["type"], "history");

    // Admitted then discharged: one event. Another patient's discharge: none.
    put(&s, &encounter("stay-1", "in-progress", "p1")).await;
    put(&s, &encounter("stay-1", "finished", "p1")).await;
    put(&s, &encounter("stay-2", "finished", "p2")).await;
    // Updating a finished stay is not a second discharge.
    let mut again = encounter("stay-1", "finished", "p1");
    again["period"] = json!({"end": "2026-11-27T18:00:00+01:00"});
    put(&s, &again).await;
    let event = dac.expect().await;
    assert_eq!(event.notification_type(), "event-notification");
    assert_eq!(event.event_numbers(), vec![1]);
    let body = event.json();
    assert_eq!(body["entry"][1]["resource"]["id"], "stay-1");
    assert_eq!(body["entry"][1]["resource"]["status"], "finished");
    let focus = body["entry"][0]["resource"]["parameter"]
        .as_array()
        .and_then(|p| p.iter().find(|x| x["name"] == "notification-event"))
        .map(|e| e["part"][2]["valueReference"]["reference"].clone())
        .expect("focus");
    assert!(
        focus
            .as_str()
            .is_some_and(|f| f.ends_with("/Encounter/stay-1/_history/2")),
        "{focus}"
    );
    assert!(dac.next(Duration::from_millis(700)).await.is_none());
    assert_eq!(event_rows(&s, &sub_id).await.len(), 1);
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_every_event_in_order_when_it_comes_back() {
    let s = TestServer::start().await;
    let addr = free_address();
    let endpoint = format!("http://{addr}/hook");
    let sub_id = subscribe(
        &s,
        &backport_subscription(DISCHARGE, None, &endpoint, "id-only"),
    )
    .await;
    for n in 0..3 {
        put(&s, &encounter(&format!("stay-{n}"), "finished", "p1")).await;
    }
    // Wait until the server has tried and failed at least once.
    let client = s.pool.get().await.expect("connection");
    let mut tried = false;
    for _ in 0..50 {
        let attempts: i32 = client
            .query_one(
                "SELECT attempts FROM subscription WHERE sub_id = $1",
                &[&sub_id],
            )
            .await
            .expect("attempts")
            .get(0);
        if attempts > 0 {
            tried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(tried, "the server tried the endpoint");
    let dac = Receiver::start_at(addr).await;
    let mut numbers = Vec::new();
    let mut kinds = Vec::new();
    while numbers.len() < 3 {
        let n = dac.expect().await;
        kinds.push(n.notification_type());
        numbers.extend(n.event_numbers());
    }
    assert_eq!(kinds[0], "handshake");
    assert_eq!(numbers, vec![1, 2, 3]);
    assert!(
        dac.next(Duration::from_millis(500)).await.is_none(),
        "no duplicates"
    );
}

#[tokio::test]
async fn a_subscription_that_keeps_failing_goes_to_error_with_the_reason() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    gp.answer_with(503);
    let sub_id = subscribe(&s, &r4_subscription("Encounter?status=finished", &gp.url())).await;
    put(&s, &encounter("stay-1", "finished", "p1")).await;
    let mut status = String::new();
    for _ in 0..100 {
        let sub = json_of(s.get(&format!("Subscription/{sub_id}")).await, 200).await;
        status = sub["status"].as_str().unwrap_or_default().to_owned();
        if status == "error" {
            assert!(
                sub["error"].as_str().is_some_and(|e| e.contains("503")),
                "{sub}"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "error");
    assert_eq!(
        event_rows(&s, &sub_id).await,
        vec![(Some(1), "failed".into(), 4)]
    );
    // In error, it matches nothing more.
    put(&s, &encounter("stay-2", "finished", "p1")).await;
    assert_eq!(event_rows(&s, &sub_id).await.len(), 1);
}

#[tokio::test]
async fn endpoints_are_refused_by_default_unless_public_https() {
    let strict = TestServer::start_on(
        fresh_database().await,
        passerelle::server::ServeOptions {
            rules: Default::default(),
            ..test_options()
        },
    )
    .await;
    for endpoint in [
        "http://dac.example.fr/hook",
        "https://127.0.0.1/hook",
        "https://169.254.169.254/x",
    ] {
        let outcome = json_of(
            strict
                .post_json(
                    "Subscription",
                    &r4_subscription("Encounter?status=finished", endpoint),
                )
                .await,
            422,
        )
        .await;
        assert_eq!(
            outcome["issue"][0]["expression"][0],
            "Subscription.channel.endpoint"
        );
    }
    json_of(
        strict
            .post_json(
                "Subscription",
                &r4_subscription("Encounter?status=finished", "https://dac.example.fr/hook"),
            )
            .await,
        201,
    )
    .await;
    let bad = json_of(
        strict
            .post_json(
                "Subscription",
                &r4_subscription("Encounter?bogus=1", "https://dac.example.fr/hook"),
            )
            .await,
        422,
    )
    .await;
    assert_eq!(bad["issue"][0]["expression"][0], "Subscription.criteria");
}

#[tokio::test]
async fn two_instances_on_one_database_deliver_each_event_once() {
    let a = TestServer::start_on(fresh_database().await, test_options()).await;
    let b = TestServer::start_on(a.config.clone(), test_options()).await;
    let dac = Receiver::start().await;
    json_of(
        a.post_json(
            "Subscription",
            &r4_subscription("Encounter?status=finished", &dac.url()),
        )
        .await,
        201,
    )
    .await;
    let writes = 40;
    let mut tasks = Vec::new();
    for n in 0..writes {
        let (base, http) = if n % 2 == 0 {
            (a.base.clone(), a.http.clone())
        } else {
            (b.base.clone(), b.http.clone())
        };
        tasks.push(tokio::spawn(async move {
            let e = encounter(&format!("stay-{n}"), "finished", "p1");
            let resp = http
                .put(format!("{base}/Encounter/stay-{n}"))
                .header("content-type", "application/fhir+json")
                .body(e.to_string())
                .send()
                .await
                .expect("PUT");
            assert_eq!(resp.status(), 201);
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let mut ids = Vec::new();
    let mut numbers = Vec::new();
    while ids.len() < writes {
        let n = dac.expect().await;
        ids.push(n.json()["id"].as_str().expect("id").to_owned());
        let event_id = n
            .header("x-passerelle-event-id")
            .expect("event id")
            .to_owned();
        numbers.push(
            event_id
                .rsplit('/')
                .next()
                .and_then(|x| x.parse::<i64>().ok())
                .expect("number"),
        );
    }
    assert!(
        dac.next(Duration::from_millis(800)).await.is_none(),
        "no duplicates"
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), writes, "each write once");
    // In order per subscription: numbers arrive 1, 2, 3 …
    assert_eq!(numbers, (1..=writes as i64).collect::<Vec<_>>());
}

/// Counts the `passerelle_outbox` notifications the database sends from now on.
async fn count_outbox_wakes(
    config: &tokio_postgres::Config,
) -> (
    tokio_postgres::Client,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use futures_util::StreamExt;
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect");
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = message {
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    client
        .batch_execute("LISTEN passerelle_outbox")
        .await
        .expect("LISTEN");
    (client, count)
}

/// Commits wake the delivery workers; the poll is only a safety net. With one
/// worker and an hour's poll, every callback comes from a commit's wake-up, and
/// each write wakes the workers once: a delivery's own bookkeeping does not
/// (it once did, a wasted look per callback).
#[tokio::test]
async fn each_commit_wakes_a_delivery_worker_once() {
    let mut options = test_options();
    options.delivery.workers = 1;
    options.delivery.poll = Duration::from_secs(3600);
    let s = TestServer::start_on(fresh_database().await, options).await;
    let gp = Receiver::start().await;
    subscribe(&s, &r4_subscription("Encounter?status=finished", &gp.url())).await;
    let (_listening, wakes) = count_outbox_wakes(&s.config).await;
    let writes = 12;
    for n in 0..writes {
        put(&s, &encounter(&format!("stay-{n}"), "finished", "p1")).await;
        let received = gp
            .next(Duration::from_secs(10))
            .await
            .expect("a callback without any poll");
        assert_eq!(received.json()["id"], format!("stay-{n}"));
    }
    // The last delivery's bookkeeping is done once its events read delivered.
    let delivered = || async {
        let client = s.pool.get().await.expect("connection");
        let row = client
            .query_one(
                "SELECT count(*) FROM subscription_event WHERE status = 'delivered'",
                &[],
            )
            .await
            .expect("count");
        row.get::<_, i64>(0)
    };
    while delivered().await < writes {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        wakes.load(std::sync::atomic::Ordering::SeqCst),
        writes as usize
    );
}

fn parameter<'a>(parameters: &'a Value, name: &str) -> Vec<&'a Value> {
    parameters["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["name"] == name)
        .collect()
}

#[tokio::test]
async fn status_events_and_the_delivery_log_tell_what_happened_and_replay_it() {
    let s = TestServer::start().await;
    let dac = Receiver::start().await;
    let sub_id = subscribe(
        &s,
        &backport_subscription(DISCHARGE, None, &dac.url(), "id-only"),
    )
    .await;
    assert_eq!(dac.expect().await.notification_type(), "handshake");
    for n in 1..=3 {
        put(&s, &encounter(&format!("stay-{n}"), "finished", "p1")).await;
    }
    let mut numbers = Vec::new();
    while numbers.len() < 3 {
        let n = dac.expect().await;
        assert!(n.json()["entry"][1].get("resource").is_none(), "id-only");
        numbers.extend(n.event_numbers());
    }
    assert_eq!(numbers, vec![1, 2, 3]);

    let status = json_of(s.get(&format!("Subscription/{sub_id}/$status")).await, 200).await;
    assert_eq!(status["type"], "searchset");
    let parameters = &status["entry"][0]["resource"];
    assert_eq!(
        parameter(parameters, "events-since-subscription-start")[0]["valueString"],
        "3"
    );
    assert_eq!(
        parameter(parameters, "type")[0]["valueCode"],
        "query-status"
    );
    assert_eq!(parameter(parameters, "status")[0]["valueCode"], "active");
    assert_eq!(
        parameter(parameters, "topic")[0]["valueCanonical"],
        DISCHARGE
    );
    let by_type = json_of(
        s.get(&format!("Subscription/$status?id={sub_id}")).await,
        200,
    )
    .await;
    assert_eq!(by_type["total"], 1);

    // Replay of events 2 and 3, with the resources this time.
    let replay = json_of(
        s.get(&format!(
            "Subscription/{sub_id}/$events?eventsSinceNumber=2&content=full-resource"
        ))
        .await,
        200,
    )
    .await;
    let status = &replay["entry"][0]["resource"];
    assert_eq!(parameter(status, "type")[0]["valueCode"], "query-event");
    let replayed: Vec<&str> = parameter(status, "notification-event")
        .iter()
        .filter_map(|e| e["part"][0]["valueString"].as_str())
        .collect();
    assert_eq!(replayed, vec!["2", "3"]);
    assert_eq!(replay["entry"][1]["resource"]["id"], "stay-2");
    assert_eq!(replay["entry"][2]["resource"]["id"], "stay-3");

    // The last notification is marked delivered just after the listener has it.
    let mut log = Value::Null;
    for _ in 0..50 {
        log = json_of(
            s.get(&format!("Subscription/{sub_id}/$deliveries")).await,
            200,
        )
        .await;
        if !log.to_string().contains("\"pending\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = parameter(&log, "event");
    assert_eq!(events.len(), 3);
    for e in events {
        let parts = e["part"].as_array().expect("parts");
        let part = |n: &str| {
            parts
                .iter()
                .find(|p| p["name"] == n)
                .cloned()
                .unwrap_or_default()
        };
        assert_eq!(part("status")["valueCode"], "delivered");
        assert_eq!(part("attempts")["valueInteger"], 1);
        assert!(part("delivered")["valueInstant"].is_string());
    }
    let bad = s
        .get(&format!(
            "Subscription/{sub_id}/$events?eventsSinceNumber=two"
        ))
        .await;
    assert_eq!(bad.status(), 400);
    assert_eq!(s.get("Subscription/nope/$status").await.status(), 404);
}

#[tokio::test]
async fn an_idle_backport_subscription_gets_heartbeats() {
    let s = TestServer::start().await;
    let dac = Receiver::start().await;
    let mut sub = backport_subscription(DISCHARGE, None, &dac.url(), "empty");
    sub["channel"]["extension"]
        .as_array_mut()
        .expect("extensions")
        .push(
            json!({"url": format!("{BACKPORT}backport-heartbeat-period"), "valueUnsignedInt": 1}),
        );
    json_of(s.post_json("Subscription", &sub).await, 201).await;
    assert_eq!(dac.expect().await.notification_type(), "handshake");
    let beat = dac.next(Duration::from_secs(5)).await.expect("a heartbeat");
    assert_eq!(beat.notification_type(), "heartbeat");
    assert_eq!(beat.json()["entry"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_websocket_bound_with_a_token_receives_the_handshake_then_notifications() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let s = TestServer::start().await;
    let mut sub = backport_subscription(
        DISCHARGE,
        Some("Encounter?patient=Patient/p1"),
        "",
        "id-only",
    );
    sub["channel"]["type"] = json!("websocket");
    sub["channel"]
        .as_object_mut()
        .expect("channel")
        .remove("endpoint");
    let sub_id = subscribe(&s, &sub).await;
    // Committed before any socket: it waits in the outbox.
    put(&s, &encounter("stay-1", "finished", "p1")).await;

    let token = json_of(
        s.get(&format!("Subscription/{sub_id}/$get-ws-binding-token"))
            .await,
        200,
    )
    .await;
    let value = |name: &str| {
        parameter(&token, name)[0]
            .as_object()
            .and_then(|p| p.iter().find(|(k, _)| k.starts_with("value")))
            .and_then(|(_, v)| v.as_str())
            .expect("parameter")
            .to_owned()
    };
    let url = value("websocket-url");
    assert!(
        url.starts_with("ws://") && url.ends_with("/fhir/$websocket"),
        "{url}"
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .expect("connect");
    socket
        .send(Message::Text("bind-with-token: nope".into()))
        .await
        .expect("send");
    let refused = socket.next().await.expect("reply").expect("message");
    assert!(
        refused.to_text().expect("text").starts_with("error"),
        "{refused}"
    );
    socket
        .send(Message::Text(
            format!("bind-with-token: {}", value("token")).into(),
        ))
        .await
        .expect("send");
    let mut bundles = Vec::new();
    while bundles.len() < 3 {
        // The handshake and the waiting event first; then a discharge while bound.
        if bundles.len() == 2 {
            put(&s, &encounter("stay-2", "finished", "p1")).await;
        }
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a message within 10 s")
            .expect("open")
            .expect("message");
        let bundle: Value = serde_json::from_str(message.to_text().expect("text")).expect("JSON");
        bundles.push(bundle);
    }
    let kind = |b: &Value| parameter(&b["entry"][0]["resource"], "type")[0]["valueCode"].clone();
    assert_eq!(kind(&bundles[0]), "handshake");
    assert_eq!(kind(&bundles[1]), "event-notification");
    assert_eq!(
        bundles[1]["entry"][1]["fullUrl"]
            .as_str()
            .map(|u| u.ends_with("/Encounter/stay-1")),
        Some(true)
    );
    assert_eq!(
        bundles[2]["entry"][1]["fullUrl"]
            .as_str()
            .map(|u| u.ends_with("/Encounter/stay-2")),
        Some(true)
    );
    // The worker marks an event delivered once the socket has taken it.
    let mut rows = Vec::new();
    for _ in 0..50 {
        rows = event_rows(&s, &sub_id).await;
        if rows == delivered_once(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows, delivered_once(2));
    // Each binding and each notification the socket carried is in the audit
    // trail (the refused binding too), recorded before it left.
    let trail = json_of(s.get("AuditEvent?_count=100").await, 200).await;
    let carried: Vec<(String, String, String)> = trail["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["resource"])
        .filter(|event| {
            event["subtype"][0]["code"]
                .as_str()
                .is_some_and(|code| code.starts_with("$websocket"))
        })
        .map(|event| {
            let what = event["entity"][0]["what"]["reference"]
                .as_str()
                .unwrap_or_default();
            (
                event["subtype"][0]["code"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                event["outcomeDesc"].as_str().unwrap_or_default().to_owned(),
                what.to_owned(),
            )
        })
        .collect();
    let subscription = format!("Subscription/{sub_id}");
    let expected: Vec<(String, String, String)> = [
        ("$websocket-notification", "HTTP 200", subscription.as_str()),
        ("$websocket-notification", "HTTP 200", subscription.as_str()),
        ("$websocket-bind", "HTTP 200", subscription.as_str()),
        ("$websocket-bind", "HTTP 400", ""),
    ]
    .iter()
    .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), (*c).to_owned()))
    .collect();
    assert_eq!(carried, expected, "{trail}");
}

#[tokio::test]
async fn a_subscription_is_turned_off_when_its_end_passes() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    let mut sub = r4_subscription("Encounter?status=finished", &gp.url());
    let end = chrono::Utc::now() + chrono::Duration::seconds(2);
    sub["end"] = json!(end.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    let sub_id = subscribe(&s, &sub).await;
    put(&s, &encounter("stay-1", "finished", "p1")).await;
    assert_eq!(gp.expect().await.json()["id"], "stay-1");
    let mut status = String::new();
    for _ in 0..80 {
        let current = json_of(s.get(&format!("Subscription/{sub_id}")).await, 200).await;
        status = current["status"].as_str().unwrap_or_default().to_owned();
        if status == "off" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "off");
    put(&s, &encounter("stay-2", "finished", "p1")).await;
    assert!(gp.next(Duration::from_millis(700)).await.is_none());
    assert_eq!(event_rows(&s, &sub_id).await.len(), 1);
}

#[tokio::test]
async fn a_transaction_records_each_subscriptions_events_once() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    gp.answer_with(503); // nothing delivered: the outbox shows what was recorded
    let mut subs = Vec::new();
    for criteria in [
        "Encounter?patient=Patient/p1&status=finished",
        "Encounter?patient=Patient/p2&status=finished",
        "Encounter?status=finished,in-progress",
    ] {
        let created = json_of(
            s.post_json("Subscription", &r4_subscription(criteria, &gp.url()))
                .await,
            201,
        )
        .await;
        subs.push(created["id"].as_str().expect("id").to_owned());
    }
    let entry = |id: &str, status: &str, patient: &str| json!({"resource": encounter(id, status, patient), "request": {"method": "PUT", "url": format!("Encounter/{id}")}});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        entry("a", "finished", "p1"), entry("b", "finished", "p2"),
        entry("c", "planned", "p1"), entry("d", "in-progress", "p3")]});
    json_of(s.post_json("", &bundle).await, 200).await;
    let client = s.pool.get().await.expect("connection");
    let recorded = |sub: String| {
        let client = &client;
        async move {
            let rows = client
                .query(
                    "SELECT focus_id FROM subscription_event WHERE sub_id = $1 ORDER BY focus_id",
                    &[&sub],
                )
                .await
                .expect("events");
            rows.iter()
                .map(|r| r.get::<_, String>(0))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(recorded(subs[0].clone()).await, vec!["a"]);
    assert_eq!(recorded(subs[1].clone()).await, vec!["b"]);
    assert_eq!(recorded(subs[2].clone()).await, vec!["a", "b", "d"]);
}

#[tokio::test]
async fn creates_written_together_record_their_events() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    gp.answer_with(503);
    let sub_id = subscribe(&s, &r4_subscription("Encounter?status=finished", &gp.url())).await;
    let post = |status: &str| {
        let mut e = encounter("x", status, "p1");
        e.as_object_mut().expect("object").remove("id");
        json!({"resource": e, "request": {"method": "POST", "url": "Encounter"}})
    };
    let bundle = json!({"resourceType": "Bundle", "type": "transaction",
                        "entry": [post("finished"), post("planned"), post("finished")]});
    json_of(s.post_json("", &bundle).await, 200).await;
    assert_eq!(event_rows(&s, &sub_id).await.len(), 2);
}

/// A transaction's versions are matched against its final state, wherever its
/// entries' batches fall: a chained criterion (asked of the database) sees the
/// patient a later entry creates, after a conditional create split the batches.
#[tokio::test]
async fn a_transaction_is_matched_against_its_final_state() {
    let s = TestServer::start().await;
    let gp = Receiver::start().await;
    gp.answer_with(503);
    let sub_id = subscribe(
        &s,
        &r4_subscription("Encounter?patient.name=dupont", &gp.url()),
    )
    .await;
    let mut stay = encounter("x", "finished", "p1");
    stay.as_object_mut().expect("object").remove("id");
    stay["subject"] = json!({"reference": "urn:uuid:00000000-0000-4000-8000-0000000000aa"});
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": stay, "request": {"method": "POST", "url": "Encounter"}},
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-0000000000aa",
         "resource": {"resourceType": "Patient", "name": [{"family": "Dupont"}],
                      "identifier": [{"system": "urn:oid:1.2.250.1.213.1.4.10", "value": "2800000000099"}]},
         "request": {"method": "POST", "url": "Patient",
                     "ifNoneExist": "identifier=urn:oid:1.2.250.1.213.1.4.10|2800000000099"}}]});
    json_of(s.post_json("", &bundle).await, 200).await;
    assert_eq!(event_rows(&s, &sub_id).await.len(), 1);
}

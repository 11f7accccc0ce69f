//! A real HTTP listener standing for a subscriber's endpoint: it records every
//! callback (headers and body) and answers with a status the test chooses.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use tokio::sync::{mpsc, Mutex};

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "callback body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// The Backport `notification-event` numbers of a notification Bundle.
    pub fn event_numbers(&self) -> Vec<i64> {
        let status = &self.json()["entry"][0]["resource"];
        status["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["name"] == "notification-event")
            .filter_map(|p| p["part"][0]["valueString"].as_str()?.parse().ok())
            .collect()
    }

    /// The Backport `subscription-status.type`.
    pub fn notification_type(&self) -> String {
        let status = &self.json()["entry"][0]["resource"];
        status["parameter"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "type")
            .and_then(|p| p["valueCode"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

#[derive(Clone)]
struct Shared {
    sender: mpsc::UnboundedSender<Received>,
    status: Arc<AtomicU16>,
}

pub struct Receiver {
    pub addr: SocketAddr,
    received: Mutex<mpsc::UnboundedReceiver<Received>>,
    status: Arc<AtomicU16>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let headers = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let status = shared.status.load(Ordering::SeqCst);
    if status < 300 {
        let _ = shared.sender.send(Received {
            headers,
            body: body.to_vec(),
        });
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

/// A loopback address nobody listens on (yet).
pub fn free_address() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe");
    probe.local_addr().expect("address")
}

impl Receiver {
    pub async fn start() -> Receiver {
        Self::start_at("127.0.0.1:0".parse().expect("address")).await
    }

    pub async fn start_at(addr: SocketAddr) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("address");
        let (sender, received) = mpsc::unbounded_channel();
        let status = Arc::new(AtomicU16::new(200));
        let app = axum::Router::new()
            .fallback(axum::routing::post(record))
            .with_state(Shared {
                sender,
                status: status.clone(),
            });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            addr,
            received: Mutex::new(received),
            status,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answer every callback with `status` (a failure is not recorded).
    pub fn answer_with(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// The next callback, waiting at most `within`.
    pub async fn next(&self, within: Duration) -> Option<Received> {
        let mut received = self.received.lock().await;
        tokio::time::timeout(within, received.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next callback, which must come within 10 s.
    pub async fn expect(&self) -> Received {
        self.next(Duration::from_secs(10))
            .await
            .expect("a callback within 10 s")
    }
}

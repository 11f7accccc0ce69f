//! Delivery of subscription notifications from the outbox: workers lease a
//! subscription with something due (`FOR UPDATE SKIP LOCKED`, a lease that expires
//! if the worker dies), number its new events, and POST them in order, one
//! notification at a time. A failure backs off exponentially with jitter; after
//! the attempt limit the subscription's pending events are marked failed and the
//! server is told to put the subscription in `error`. Woken at commit by
//! `LISTEN passerelle_outbox`, with a poll as the safety net.

pub mod client;
pub mod mail;
pub mod websocket;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::Notify;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::error::{FhirError, FhirResult};
use crate::metrics::Delivered;
use crate::store::{self, subscriptions};
use crate::subscription::notification::{self, About, Kind};
use crate::subscription::{Channel, Content, EndpointPolicy};

/// How delivery works (environment variables in the README).
#[derive(Debug, Clone)]
pub struct Tuning {
    /// Workers of this instance (0: it records events but leaves their delivery
    /// to other instances).
    pub workers: usize,
    /// Attempts of one notification before the subscription goes to `error`.
    pub max_attempts: i32,
    /// The first retry waits about this long, doubling each time (with jitter).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Per-request timeout (a subscription's `backport-timeout` overrides it).
    pub timeout: Duration,
    /// The safety net of the commit notifications.
    pub poll: Duration,
    /// Where email channels' mail goes out; none: email channels are refused.
    pub smtp: Option<mail::Smtp>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            workers: 4,
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            poll: Duration::from_secs(1),
            smtp: None,
        }
    }
}

/// Delivery settings: the tuning, the endpoint policy and the public base.
#[derive(Debug, Clone)]
pub struct Settings {
    pub tuning: Tuning,
    pub policy: EndpointPolicy,
    /// The server's public FHIR base, for references in notifications.
    pub base_url: String,
}

impl Settings {
    /// A lease outlives one notification's timeout with room to spare.
    fn lease_secs(&self) -> f64 {
        self.tuning.timeout.as_secs_f64() * 2.0 + 5.0
    }

    /// The wait before attempt `attempt + 1`: base × 2^(attempt-1), capped, times
    /// a random factor in [0.5, 1) so that retries of many subscriptions spread.
    fn backoff(&self, attempt: i32) -> Duration {
        let exp = self
            .tuning
            .backoff_base
            .saturating_mul(1u32 << attempt.clamp(1, 20).saturating_sub(1));
        let capped = exp.min(self.tuning.backoff_max);
        let jitter = 0.5 + (uuid::Uuid::new_v4().as_u128() % 1000) as f64 / 2000.0;
        capped.mul_f64(jitter)
    }
}

/// The status delivery asks the server to give a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Deliveries keep failing: `error`, with the reason.
    Error,
    /// Its `end` has passed: `off`.
    Ended,
}

/// What delivery asks of the server when a subscription keeps failing or has
/// ended: a new version of the Subscription (through the write path, which
/// delivery sits below and does not call itself).
pub trait StatusSink: Send + Sync {
    fn set_status(
        &self,
        sub_id: String,
        outcome: Outcome,
        reason: String,
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

/// The running workers; dropping it does not stop them, `stop` does.
pub struct Delivery {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// What the workers' lease ids start with.
    instance: String,
    pool: Pool,
}

impl Delivery {
    pub fn stop(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }

    /// Stops the workers and gives their leases back, so that another instance
    /// delivers what they held without waiting for the leases to expire.
    pub async fn stop_and_release(mut self) {
        self.stop();
        let released = match self.pool.get().await {
            Ok(client) => subscriptions::release_instance(&client, &self.instance).await,
            Err(e) => Err(e.into()),
        };
        match released {
            Ok(n) => tracing::info!(leases = n, "delivery stopped, leases given back"),
            Err(e) => tracing::warn!(error = %e, "delivery stopped; its leases will expire"),
        }
    }
}

/// Pending events read at once (R4 sends them one per POST).
const PAGE: i64 = 50;

struct Worker {
    id: String,
    pool: Pool,
    settings: Settings,
    http: reqwest::Client,
    mailer: Option<Arc<mail::Mailer>>,
    sink: Arc<dyn StatusSink>,
    hub: Arc<websocket::Hub>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Why a notification was not delivered.
enum SendError {
    /// The endpoint failed or refused: counts as a failed attempt.
    Failed(String),
    /// A websocket subscription with no socket bound here: it waits, no failure.
    NotBound,
}

/// Starts the listener, the workers and the heartbeat loop.
pub fn start(
    pool: Pool,
    listen: tokio_postgres::Config,
    settings: Settings,
    sink: Arc<dyn StatusSink>,
    hub: Arc<websocket::Hub>,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Delivery, String> {
    let wake = hub.wake.clone();
    let http =
        client::http_client(settings.policy, settings.tuning.timeout).map_err(|e| e.to_string())?;
    let mailer = match &settings.tuning.smtp {
        Some(smtp) => Some(Arc::new(mail::Mailer::new(smtp, settings.tuning.timeout)?)),
        None => None,
    };
    let instance = uuid::Uuid::new_v4().simple().to_string();
    let mut tasks = vec![tokio::spawn(listen_for_commits(listen, wake.clone()))];
    let worker = |n: usize| {
        Arc::new(Worker {
            id: format!("{instance}-{n}"),
            pool: pool.clone(),
            settings: settings.clone(),
            http: http.clone(),
            mailer: mailer.clone(),
            sink: sink.clone(),
            hub: hub.clone(),
            metrics: metrics.clone(),
        })
    };
    for n in 0..settings.tuning.workers {
        tasks.push(tokio::spawn(worker(n).run(wake.clone())));
    }
    tasks.push(tokio::spawn(worker(usize::MAX).run_heartbeats()));
    Ok(Delivery {
        tasks,
        instance,
        pool,
    })
}

/// Wakes a worker on every `NOTIFY passerelle_outbox`; reconnects on failure.
/// One worker, not all: a worker that finds work wakes the next (see
/// `lease_and_deliver`), so a burst still spreads over the workers while a single
/// event costs one look instead of one per worker.
async fn listen_for_commits(config: tokio_postgres::Config, wake: Arc<Notify>) {
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listen = client.batch_execute("LISTEN passerelle_outbox");
                let mut listening = false;
                tokio::pin!(listen);
                loop {
                    tokio::select! {
                        done = &mut listen, if !listening => {
                            if let Err(e) = done {
                                tracing::warn!(error = %e, "LISTEN failed");
                                break;
                            }
                            listening = true;
                            // Anything committed before LISTEN took effect.
                            wake.notify_one();
                        }
                        message = messages.next() => match message {
                            Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                            Some(Ok(_)) => {}
                            Some(Err(e)) => {
                                tracing::warn!(error = %e, "outbox listener lost its connection");
                                break;
                            }
                            None => break,
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "outbox listener cannot connect"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Worker {
    /// Delivers what commits bring, woken by `wake` (the poll as a safety net).
    async fn run(self: Arc<Self>, wake: Arc<Notify>) {
        loop {
            // Registered before looking, so that a commit in between still wakes us.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.work(false).await {
                let _ = tokio::time::timeout(self.settings.tuning.poll, notified).await;
            }
        }
    }

    /// Sends the heartbeats due, once a second. It never waits on the commits'
    /// wake-ups: a waiter that sleeps through one keeps it from the workers (a
    /// callback a second late).
    async fn run_heartbeats(self: Arc<Self>) {
        loop {
            if !self.work(true).await {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }

    /// One lease and its deliveries; false when nothing was due or it failed.
    async fn work(&self, heartbeats: bool) -> bool {
        self.lease_and_deliver(heartbeats)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "delivery worker");
                false
            })
    }

    /// Leases one subscription and delivers what is due; false when nothing was.
    async fn lease_and_deliver(&self, heartbeats: bool) -> FhirResult<bool> {
        let client = self.pool.get().await?;
        if heartbeats {
            // The heartbeat loop also turns off subscriptions whose end has passed.
            for sub_id in subscriptions::ended(&client).await? {
                let reason = "its end has passed".to_owned();
                self.sink.set_status(sub_id, Outcome::Ended, reason).await;
            }
        }
        let (leased, with_work) = subscriptions::lease(
            &client,
            &self.id,
            self.settings.lease_secs(),
            1,
            heartbeats,
            &self.hub.bound(),
        )
        .await?;
        drop(client);
        let Some(sub) = leased.into_iter().next() else {
            return Ok(false);
        };
        if !heartbeats && with_work > 1 {
            // Others had work too: another worker looks while this one delivers.
            // (Work committed meanwhile wakes one by its own notification.)
            self.hub.wake.notify_one();
        }
        let sub_id = sub.sub_id.clone();
        let result = if heartbeats {
            self.heartbeat(sub).await
        } else {
            self.deliver(sub).await
        };
        if let Err(e) = result {
            tracing::warn!(%sub_id, error = %e, "delivery");
        }
        let client = self.pool.get().await?;
        subscriptions::release(&client, &self.id, &sub_id).await?;
        Ok(true)
    }

    async fn heartbeat(&self, sub: subscriptions::Leased) -> FhirResult<()> {
        let channel = channel_of(&sub)?;
        let body = self.status_body(&sub, &channel, Kind::Heartbeat, &[]);
        match self.send(&sub.sub_id, &channel, body, None).await {
            Ok(()) => {
                let client = self.pool.get().await?;
                subscriptions::delivered(&client, &sub.sub_id, &[], false).await
            }
            Err(SendError::NotBound) => Ok(()),
            Err(SendError::Failed(reason)) => {
                self.failure(&sub.sub_id, sub.attempts + 1, &[], &reason)
                    .await
            }
        }
    }

    /// Delivers a leased subscription's handshake, then its events in order.
    #[tracing::instrument(skip_all, fields(sub_id = %sub.sub_id))]
    async fn deliver(&self, mut sub: subscriptions::Leased) -> FhirResult<()> {
        let channel = channel_of(&sub)?;
        let client = self.pool.get().await?;
        sub.events_since_start = subscriptions::number_events(&client, &sub.sub_id).await?;
        if sub.handshake_due {
            let body = self.status_body(&sub, &channel, Kind::Handshake, &[]);
            match self.send(&sub.sub_id, &channel, body, None).await {
                Ok(()) => subscriptions::delivered(&client, &sub.sub_id, &[], true).await?,
                Err(SendError::NotBound) => return Ok(()),
                Err(SendError::Failed(reason)) => {
                    return self
                        .failure(&sub.sub_id, sub.attempts + 1, &[], &reason)
                        .await;
                }
            }
        }
        // Pending events are read in pages; a page shorter than asked means none
        // was left (later ones wake a worker again).
        let page = channel.max_count.max(PAGE);
        loop {
            let events = subscriptions::pending(&client, &sub.sub_id, page).await?;
            for batch in events.chunks(channel.max_count.max(1) as usize) {
                if !self.send_batch(&client, &sub, &channel, batch).await? {
                    return Ok(());
                }
                sub.attempts = 0;
            }
            if (events.len() as i64) < page
                || !subscriptions::renew(&client, &self.id, &sub.sub_id, self.settings.lease_secs())
                    .await?
            {
                return Ok(());
            }
        }
    }

    /// Sends `batch` as one notification; false when it failed (the subscription
    /// then waits for its next attempt, or has gone to `error`).
    async fn send_batch(
        &self,
        client: &deadpool_postgres::Client,
        sub: &subscriptions::Leased,
        channel: &Channel,
        batch: &[subscriptions::Event],
    ) -> FhirResult<bool> {
        let seqs: Vec<i64> = batch.iter().map(|e| e.seq).collect();
        let (first, last) = match (batch.first(), batch.last()) {
            (Some(f), Some(l)) => (f.event_number, l.event_number),
            _ => return Ok(true),
        };
        let body = if channel.backport {
            let events = notification_events(client, batch.to_vec(), channel.content).await?;
            self.status_body(sub, channel, Kind::EventNotification, &events)
        } else {
            self.r4_body(client, channel, &batch[0]).await?
        };
        let event_id = if first == last {
            format!("{}/{first}", sub.sub_id)
        } else {
            format!("{}/{first}-{last}", sub.sub_id)
        };
        match self.send(&sub.sub_id, channel, body, Some(event_id)).await {
            Ok(()) => {
                subscriptions::delivered(client, &sub.sub_id, &seqs, false).await?;
                Ok(true)
            }
            Err(SendError::NotBound) => Ok(false),
            Err(SendError::Failed(reason)) => {
                self.failure(&sub.sub_id, sub.attempts + 1, &seqs, &reason)
                    .await?;
                Ok(false)
            }
        }
    }

    async fn failure(
        &self,
        sub_id: &str,
        attempt: i32,
        seqs: &[i64],
        reason: &str,
    ) -> FhirResult<()> {
        let give_up = attempt >= self.settings.tuning.max_attempts;
        self.metrics.delivery(match give_up {
            true => Delivered::GaveUp,
            false => Delivered::Failed,
        });
        let wait = self.settings.backoff(attempt);
        tracing::info!(%sub_id, attempt, give_up, reason, "notification failed");
        let client = self.pool.get().await?;
        subscriptions::failed(&client, sub_id, seqs, reason, wait.as_secs_f64(), give_up).await?;
        drop(client);
        if give_up {
            self.sink
                .set_status(
                    sub_id.to_owned(),
                    Outcome::Error,
                    format!("delivery failed {attempt} times; last error: {reason}"),
                )
                .await;
        }
        Ok(())
    }

    fn status_body(
        &self,
        sub: &subscriptions::Leased,
        channel: &Channel,
        kind: Kind,
        events: &[notification::Event],
    ) -> Option<(Vec<u8>, String)> {
        let about = About {
            base: &self.settings.base_url,
            sub_id: &sub.sub_id,
            topic: channel.topic.as_deref(),
            status: "active",
            events_since_start: sub.events_since_start,
            error: None,
        };
        let bundle = notification::bundle(&about, kind, events, channel.content, Utc::now());
        encode(channel, &bundle)
    }

    /// R4 criteria: the resource itself in the payload's format, or no body.
    async fn r4_body(
        &self,
        client: &impl deadpool_postgres::GenericClient,
        channel: &Channel,
        event: &subscriptions::Event,
    ) -> FhirResult<Option<(Vec<u8>, String)>> {
        if channel.content == Content::Empty {
            return Ok(None);
        }
        Ok(focus(client, event)
            .await?
            .and_then(|r| encode(channel, &r)))
    }

    /// Sends one notification, counted and timed in the metrics (a failure is
    /// counted by `failure`, which knows whether it was the last attempt).
    async fn send(
        &self,
        sub_id: &str,
        channel: &Channel,
        body: Option<(Vec<u8>, String)>,
        event_id: Option<String>,
    ) -> Result<(), SendError> {
        let started = std::time::Instant::now();
        let sent = self.transmit(sub_id, channel, body, event_id).await;
        match &sent {
            Ok(()) => self.metrics.delivery(Delivered::Delivered),
            Err(SendError::Failed(_)) => {}
            Err(SendError::NotBound) => return sent,
        }
        self.metrics.delivery_time(started.elapsed());
        sent
    }

    /// One notification POSTed to a rest-hook (delivered when answered 2xx),
    /// mailed, or sent through the sockets bound to a websocket subscription (the
    /// Backport's Bundle, or R4's `ping <id>`).
    async fn transmit(
        &self,
        sub_id: &str,
        channel: &Channel,
        body: Option<(Vec<u8>, String)>,
        event_id: Option<String>,
    ) -> Result<(), SendError> {
        let (bytes, mime) = body.unwrap_or_default();
        if channel.websocket {
            let message = if channel.backport {
                String::from_utf8_lossy(&bytes).into_owned()
            } else {
                format!("ping {sub_id}")
            };
            return if self.hub.send(sub_id, &message) {
                Ok(())
            } else {
                Err(SendError::NotBound)
            };
        }
        if channel.email {
            return self.mail(sub_id, channel, &bytes, &mime).await;
        }
        if let Some(reason) = self.settings.policy.refusal(&channel.endpoint) {
            return Err(SendError::Failed(reason));
        }
        let mut request = self
            .http
            .post(&channel.endpoint)
            .header(
                client::SIGNATURE_HEADER,
                client::signature(&channel.secret, &bytes),
            )
            .header("x-passerelle-subscription", sub_id);
        if let Some(id) = event_id {
            request = request.header(client::EVENT_ID_HEADER, id);
        }
        if let Some(traceparent) = crate::telemetry::traceparent() {
            request = request.header("traceparent", traceparent);
        }
        if !mime.is_empty() {
            request = request.header("content-type", mime);
        }
        for header in &channel.headers {
            if let Some((name, value)) = header.split_once(':') {
                request = request.header(name.trim(), value.trim());
            }
        }
        if let Some(secs) = channel.timeout_secs.filter(|s| *s > 0) {
            request = request.timeout(Duration::from_secs(secs.unsigned_abs()));
        }
        let response = request.body(bytes).send().await.map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            SendError::Failed(text)
        })?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(SendError::Failed(format!("the endpoint answered {status}")))
        }
    }
}

impl Worker {
    /// Sends one notification by mail: the readable text, the notification
    /// attached.
    async fn mail(
        &self,
        sub_id: &str,
        channel: &Channel,
        body: &[u8],
        mime: &str,
    ) -> Result<(), SendError> {
        let Some(mailer) = &self.mailer else {
            return Err(SendError::Failed(
                "no SMTP server is configured (PASSERELLE_SMTP_URL)".to_owned(),
            ));
        };
        let Some(to) = crate::subscription::endpoint::mail_address(&channel.endpoint) else {
            return Err(SendError::Failed(format!(
                "'{}' is not a mailto: address",
                channel.endpoint
            )));
        };
        let resource: Option<Value> = serde_json::from_slice(body).ok();
        let notice = mail::notice(resource.as_ref(), sub_id, &self.settings.base_url);
        // A discharge's or a document's notice carries the stay's letters.
        let letters = match resource.as_ref().and_then(mail::stay_with_letters) {
            Some(stay) => {
                let client = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| SendError::Failed(e.to_string()))?;
                let documents = store::documents_of_stay(&client, stay, MAX_LETTERS)
                    .await
                    .map_err(|e| SendError::Failed(e.to_string()))?;
                mail::letters(&documents)
            }
            None => Vec::new(),
        };
        mailer
            .send(to, &notice, body, mime, &letters)
            .await
            .map_err(SendError::Failed)
    }
}

/// Documents of a stay looked at for one mail.
const MAX_LETTERS: i64 = 10;

fn channel_of(sub: &subscriptions::Leased) -> FhirResult<Channel> {
    serde_json::from_value(sub.channel.clone())
        .map_err(|e| FhirError::Internal(format!("subscription {}: bad channel: {e}", sub.sub_id)))
}

/// Recorded events as notifications show them, with each focus resource at its
/// version for `full-resource` (for callbacks and for `$events`).
pub async fn notification_events(
    client: &impl deadpool_postgres::GenericClient,
    events: Vec<subscriptions::Event>,
    content: Content,
) -> FhirResult<Vec<notification::Event>> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let resource = if content == Content::FullResource {
            focus(client, &e).await?
        } else {
            None
        };
        out.push(notification::Event {
            number: e.event_number,
            recorded_at: e.recorded_at,
            focus_type: e.focus_type,
            focus_id: e.focus_id,
            focus_version: e.focus_version,
            interaction: e.interaction,
            resource,
        });
    }
    Ok(out)
}

/// The focus of an event at its version (`None` for a delete).
async fn focus(
    client: &impl deadpool_postgres::GenericClient,
    event: &subscriptions::Event,
) -> FhirResult<Option<Value>> {
    let stored = store::read_version(
        client,
        &event.focus_type,
        &event.focus_id,
        event.focus_version,
    )
    .await?;
    stored
        .and_then(|s| s.json)
        .map(|json| serde_json::from_str(&json).map_err(|e| FhirError::Internal(e.to_string())))
        .transpose()
}

/// A resource in the channel's MIME type (JSON unless XML is asked).
fn encode(channel: &Channel, resource: &Value) -> Option<(Vec<u8>, String)> {
    let mime = channel
        .mime
        .clone()
        .unwrap_or_else(|| "application/fhir+json".to_owned());
    if mime.contains("xml") {
        match crate::fhir::xml::from_json(&resource.to_string(), false) {
            Ok(xml) => return Some((xml, mime)),
            Err(e) => {
                tracing::warn!(error = %e, "notification not expressible as XML; sent as JSON")
            }
        }
        return Some((
            resource.to_string().into_bytes(),
            "application/fhir+json".to_owned(),
        ));
    }
    Some((resource.to_string().into_bytes(), mime))
}

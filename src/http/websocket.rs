//! `GET /fhir/$websocket`: the socket of websocket subscriptions. A client sends
//! `bind-with-token: <token>` (from `Subscription/[id]/$get-ws-binding-token`);
//! the server answers with the handshake (a Backport handshake Bundle, or R4's
//! `bound <id>`), then sends each notification as it is delivered (a Bundle, or
//! R4's `ping <id>`). One socket may bind several subscriptions. Each binding and
//! each notification sent is in the audit trail before it leaves, naming the
//! Subscription's owner as the one it was for.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::Response;

use std::collections::HashMap;

use crate::auth::Access;
use crate::service;
use crate::state::AppState;
use crate::store::audit::AuditRow;

use super::audited;

pub async fn upgrade(
    State(state): State<AppState>,
    parts: Parts,
    ws: WebSocketUpgrade,
) -> Response {
    let base = super::base_url(&state, &parts);
    let source = parts
        .extensions
        .get::<crate::state::Peer>()
        .map(|p| p.0.ip().to_string());
    // Counted as the connection it came on, until it closes.
    let connection = parts
        .extensions
        .get::<crate::state::ConnectionSlot>()
        .cloned();
    ws.on_upgrade(move |socket| serve(state, base, source, socket, connection))
}

/// What a socket has been bound to: each Subscription and its owner, who is
/// the recipient named in the audit records of its notifications.
type Bound = HashMap<String, Option<Access>>;

async fn serve(
    state: AppState,
    base: String,
    source: Option<String>,
    mut socket: WebSocket,
    // Held until the socket closes: its slot among the connections served.
    connection: Option<crate::state::ConnectionSlot>,
) {
    let hub = state.hub.clone();
    let (id, sender, mut outgoing) = hub.open();
    let mut bound = Bound::new();
    let mut stopping = connection.as_ref().map(|c| c.stopping.clone());
    let stopped = async move {
        match stopping.as_mut() {
            Some(stopping) => {
                let _ = stopping.wait_for(|stopping| *stopping).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopped);
    loop {
        let reply = tokio::select! {
            // The server stops: the client reconnects to another instance and
            // replays what it missed (`$events`).
            () = &mut stopped => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            message = outgoing.recv() => match message {
                Some((sub_id, text)) => {
                    // Sent only once recorded; unrecorded, the socket closes and
                    // the client replays what it missed (`$events`).
                    let owner = bound.get(&sub_id).and_then(Option::as_ref);
                    let subtype = "$websocket-notification";
                    let row = audited::websocket_row(subtype, 200, Some(&sub_id), owner, source.clone());
                    if !recorded(&state, row).await {
                        break;
                    }
                    text
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => match text.as_str().trim().strip_prefix("bind-with-token:") {
                    Some(token) => {
                        let (reply, row, sub_id) = bind(&state, &base, token.trim(), &mut bound, &source).await;
                        if !recorded(&state, row).await {
                            break;
                        }
                        // Bound first: notifications queue behind the handshake.
                        if let Some(sub_id) = sub_id {
                            hub.bind(id, &sender, &sub_id);
                        }
                        reply
                    }
                    None => "error unknown command; send 'bind-with-token: <token>'".to_owned(),
                },
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => continue,
            },
        };
        if socket.send(Message::Text(reply.into())).await.is_err() {
            break;
        }
    }
    hub.close(id);
}

/// Binds the socket with a token: the handshake (or the error) to answer, its
/// audit record, and the Subscription bound.
async fn bind(
    state: &AppState,
    base: &str,
    token: &str,
    bound: &mut Bound,
    source: &Option<String>,
) -> (String, AuditRow, Option<String>) {
    const SUBTYPE: &str = "$websocket-bind";
    match service::subscriptions::ws_bind(&state.pool, base, token).await {
        Ok((sub_id, handshake)) => {
            let owner = owner_of(state, &sub_id).await;
            let row =
                audited::websocket_row(SUBTYPE, 200, Some(&sub_id), owner.as_ref(), source.clone());
            bound.insert(sub_id.clone(), owner);
            (handshake, row, Some(sub_id))
        }
        Err(e) => {
            let row = audited::websocket_row(SUBTYPE, e.status(), None, None, source.clone());
            (format!("error {e}"), row, None)
        }
    }
}

/// The client that filed a Subscription, as its owner was kept.
async fn owner_of(state: &AppState, sub_id: &str) -> Option<Access> {
    let client = state.pool.get().await.ok()?;
    let owner = crate::store::subscriptions::owner_of(&client, sub_id)
        .await
        .ok()??;
    Access::of_owner(owner?)
}

/// Whether the record is stored (always, with the audit trail off).
async fn recorded(state: &AppState, row: AuditRow) -> bool {
    match &state.auditor {
        Some(auditor) => auditor.record(row).await,
        None => true,
    }
}

//! `GET /fhir/$websocket`: the socket of websocket subscriptions. A client sends
//! `bind-with-token: <token>` (from `Subscription/[id]/$get-ws-binding-token`);
//! the server answers with the handshake (a Backport handshake Bundle, or R4's
//! `bound <id>`), then sends each notification as it is delivered (a Bundle, or
//! R4's `ping <id>`). One socket may bind several subscriptions.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::response::Response;

use crate::service;
use crate::state::AppState;

pub async fn upgrade(
    State(state): State<AppState>,
    parts: Parts,
    ws: WebSocketUpgrade,
) -> Response {
    let base = super::base_url(&state, &parts);
    ws.on_upgrade(move |socket| serve(state, base, socket))
}

async fn serve(state: AppState, base: String, mut socket: WebSocket) {
    let hub = state.hub.clone();
    let (id, sender, mut outgoing) = hub.open();
    loop {
        let reply = tokio::select! {
            message = outgoing.recv() => match message {
                Some(text) => text,
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => match text.as_str().trim().strip_prefix("bind-with-token:") {
                    Some(token) => match service::subscriptions::ws_bind(&state.pool, &base, token.trim()).await {
                        Ok((sub_id, handshake)) => {
                            // Bound first: notifications queue behind the handshake.
                            hub.bind(id, &sender, &sub_id);
                            handshake
                        }
                        Err(e) => format!("error {e}"),
                    },
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

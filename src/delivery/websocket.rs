//! Websocket channels: a client binds a socket to a subscription with a token
//! from `$get-ws-binding-token`; the instance holding the socket is the one that
//! leases the subscription and sends its notifications through it. Until a socket
//! is bound, the subscription's events wait in the outbox.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

/// A message for a socket: the subscription it is of, and its text.
pub type Outgoing = (String, String);

/// A socket: its number on this instance and where its messages go.
type Socket = (u64, mpsc::UnboundedSender<Outgoing>);

/// The sockets bound on this instance, by subscription.
pub struct Hub {
    sockets: Mutex<HashMap<String, Vec<Socket>>>,
    next_socket: AtomicU64,
    /// Wakes the delivery workers (a bound socket may have events waiting).
    pub(crate) wake: Arc<Notify>,
}

impl Hub {
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub {
            sockets: Mutex::new(HashMap::new()),
            next_socket: AtomicU64::new(1),
            wake: Arc::new(Notify::new()),
        })
    }

    /// A new socket; its messages arrive on the receiver.
    pub fn open(
        &self,
    ) -> (
        u64,
        mpsc::UnboundedSender<Outgoing>,
        mpsc::UnboundedReceiver<Outgoing>,
    ) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (
            self.next_socket.fetch_add(1, Ordering::Relaxed),
            sender,
            receiver,
        )
    }

    /// Binds a socket to a subscription and wakes a worker.
    pub fn bind(&self, socket: u64, sender: &mpsc::UnboundedSender<Outgoing>, sub_id: &str) {
        if let Ok(mut sockets) = self.sockets.lock() {
            sockets
                .entry(sub_id.to_owned())
                .or_default()
                .push((socket, sender.clone()));
        }
        self.wake.notify_one();
    }

    /// Forgets a closed socket.
    pub fn close(&self, socket: u64) {
        if let Ok(mut sockets) = self.sockets.lock() {
            sockets.retain(|_, bound| {
                bound.retain(|(id, _)| *id != socket);
                !bound.is_empty()
            });
        }
    }

    /// The subscriptions with a socket bound here.
    pub fn bound(&self) -> Vec<String> {
        self.sockets
            .lock()
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Sends to every socket bound to the subscription; false when none took it.
    pub fn send(&self, sub_id: &str, message: &str) -> bool {
        let Ok(sockets) = self.sockets.lock() else {
            return false;
        };
        sockets.get(sub_id).is_some_and(|bound| {
            bound
                .iter()
                .filter(|(_, s)| s.send((sub_id.to_owned(), message.to_owned())).is_ok())
                .count()
                > 0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_go_to_the_sockets_bound_to_a_subscription() {
        let hub = Hub::new();
        let (a, sender_a, mut inbox_a) = hub.open();
        let (b, sender_b, mut inbox_b) = hub.open();
        hub.bind(a, &sender_a, "s1");
        hub.bind(b, &sender_b, "s2");
        assert!(hub.send("s1", "hello"));
        assert_eq!(
            inbox_a.try_recv().ok(),
            Some(("s1".to_owned(), "hello".to_owned()))
        );
        assert!(inbox_b.try_recv().is_err());
        hub.close(a);
        assert!(!hub.send("s1", "again"));
        assert_eq!(hub.bound(), vec!["s2".to_owned()]);
    }
}

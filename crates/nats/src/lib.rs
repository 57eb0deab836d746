//! Core NATS as the node ↔ node bus.
//!
//! Each stream maps to the subject `<prefix>.<base64url(stream)>` (stream names may hold any
//! character; subjects may not). A node subscribes only to streams with local subscribers.
//! The async-nats client reconnects by itself and re-establishes its subscriptions; the node
//! keeps serving local traffic meanwhile, and the connection state shows in the metrics.

mod broker;

pub use broker::JetStreamBroker;

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ferrocable_node::pubsub::{PubSub, PubSubHooks, decode_envelope};
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tracing::warn;

enum Command {
    Subscribe(String),
    Unsubscribe(String),
}

/// Messages waiting to be published before new ones are dropped (and counted in the pubsub
/// errors): while NATS is away, the client's own buffer fills and this queue holds the rest,
/// never more.
const PUBLISH_QUEUE: usize = 65_536;

/// The NATS bus for one node.
pub struct NatsPubSub {
    url: String,
    prefix: String,
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    publish: Mutex<Option<mpsc::Sender<(String, String)>>>,
    hooks: Mutex<Option<PubSubHooks>>,
}

impl std::fmt::Debug for NatsPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPubSub")
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl NatsPubSub {
    /// A bus on `url` (`nats://host:port`); subjects start with `prefix` (e.g. `ferrocable`).
    pub fn new(url: &str, prefix: &str) -> Self {
        NatsPubSub {
            url: url.to_owned(),
            prefix: prefix.trim_end_matches('.').to_owned(),
            commands: Mutex::new(None),
            publish: Mutex::new(None),
            hooks: Mutex::new(None),
        }
    }
}

fn subject(prefix: &str, stream: &str) -> String {
    format!("{prefix}.{}", URL_SAFE_NO_PAD.encode(stream))
}

async fn run(
    url: String,
    prefix: String,
    hooks: PubSubHooks,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut publishes: mpsc::Receiver<(String, String)>,
) {
    let events = hooks.clone();
    let options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .event_callback(move |event| {
            let hooks = events.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        hooks.connected.set(1);
                    }
                    async_nats::Event::Disconnected => {
                        hooks.connected.set(0);
                        hooks.errors.inc();
                        warn!("nats pubsub: disconnected; local traffic continues, reconnecting");
                    }
                    _ => {}
                }
            }
        });
    let client = match options.connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "nats pubsub: cannot connect");
            hooks.errors.inc();
            return;
        }
    };
    hooks.connected.set(1);
    let mut readers: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let cmd = tokio::select! {
            biased;
            c = commands.recv() => match c {
                Some(c) => c,
                None => return,
            },
            p = publishes.recv() => {
                let Some((stream, envelope)) = p else { return };
                if client
                    .publish(subject(&prefix, &stream), envelope.into())
                    .await
                    .is_err()
                {
                    hooks.errors.inc();
                }
                continue;
            }
        };
        match cmd {
            Command::Subscribe(stream) => {
                if readers.contains_key(&stream) {
                    continue;
                }
                match client.subscribe(subject(&prefix, &stream)).await {
                    Ok(mut sub) => {
                        let hooks = hooks.clone();
                        let name = stream.clone();
                        readers.insert(
                            stream,
                            tokio::spawn(async move {
                                while let Some(msg) = sub.next().await {
                                    let Ok(text) = std::str::from_utf8(&msg.payload) else {
                                        hooks.errors.inc();
                                        continue;
                                    };
                                    match decode_envelope(text) {
                                        Some(e) if e.origin == hooks.node_id => {}
                                        Some(e) if e.stream == name => (hooks.deliver)(
                                            &e.stream,
                                            e.message.get(),
                                            e.position().as_ref(),
                                        ),
                                        Some(_) => {}
                                        None => {
                                            hooks.errors.inc();
                                        }
                                    }
                                }
                            }),
                        );
                    }
                    Err(e) => {
                        warn!(error = %e, "nats pubsub: subscribe failed");
                        hooks.errors.inc();
                    }
                }
            }
            Command::Unsubscribe(stream) => {
                if let Some(task) = readers.remove(&stream) {
                    task.abort();
                }
            }
        }
    }
}

impl PubSub for NatsPubSub {
    fn start(&self, hooks: PubSubHooks) {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ptx, prx) = mpsc::channel(PUBLISH_QUEUE);
        *self.commands.lock() = Some(tx);
        *self.publish.lock() = Some(ptx);
        *self.hooks.lock() = Some(hooks.clone());
        tokio::spawn(run(self.url.clone(), self.prefix.clone(), hooks, rx, prx));
    }

    fn publish(&self, stream: &str, envelope: String) {
        let Some(hooks) = self.hooks.lock().clone() else {
            return;
        };
        if let Some(tx) = self.publish.lock().as_ref()
            && tx.try_send((stream.to_owned(), envelope)).is_err()
        {
            // The queue is full (NATS away for long) or closed: drop and count.
            hooks.errors.inc();
        }
    }

    fn subscribe(&self, stream: &str) {
        if let Some(tx) = self.commands.lock().as_ref() {
            let _ = tx.send(Command::Subscribe(stream.to_owned()));
        }
    }

    fn unsubscribe(&self, stream: &str) {
        if let Some(tx) = self.commands.lock().as_ref() {
            let _ = tx.send(Command::Unsubscribe(stream.to_owned()));
        }
    }
}

/// Reads AnyCable publications from the NATS subject `subject` (`__anycable__`, anycable-rails'
/// `nats` broadcast adapter) and delivers them to this node's subscribers, with their `meta`.
/// Every node subscribes itself, so deliveries are local only (never republished on the bus).
/// The client reconnects by itself and re-subscribes.
pub fn spawn_anycable_ingress(
    url: &str,
    subject: &str,
    node: ferrocable_node::Node,
) -> tokio::task::JoinHandle<()> {
    let url = url.to_owned();
    let subject = subject.to_owned();
    tokio::spawn(async move {
        let shutdown = node.shutdown_token();
        let options = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2));
        let client = tokio::select! {
            _ = shutdown.cancelled() => return,
            c = options.connect(&url) => c,
        };
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, %url, "nats ingress: cannot connect");
                node.metrics().pubsub_errors.inc();
                return;
            }
        };
        let mut messages = match client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, %subject, "nats ingress: cannot subscribe");
                node.metrics().pubsub_errors.inc();
                return;
            }
        };
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = messages.next() => m,
            };
            let Some(message) = message else { return };
            match ferrocable_node::ingress::decode_publications(&message.payload) {
                Ok(list) => {
                    for p in &list {
                        let _ = node.publish(p, true);
                    }
                }
                Err(e) => {
                    warn!(error = %e, "nats ingress: publication refused");
                    node.metrics().ingress_refused("malformed");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_stream_name_becomes_a_valid_subject_token() {
        let s = subject("ferrocable", "chat/2024 *.> room");
        let token = s.strip_prefix("ferrocable.").unwrap();
        assert!(
            token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "{s}"
        );
        assert_ne!(subject("p", "a"), subject("p", "b"));
    }
}

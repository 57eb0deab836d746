//! History replay on the extended protocol: a restored or resuming subscription's stored
//! messages are sent once, in offset order, before its live frames.

use super::*;

/// How long live frames of a restored subscription wait for the client's `history` request
/// before they are sent anyway.
pub(super) const REPLAY_GATE_TIMEOUT: Duration = Duration::from_secs(5);

/// Ordering state of a connection that replays history (extended protocol): live frames
/// of a subscription whose replay is pending are held back, and every stored message is
/// sent at most once, in offset order.
#[derive(Default)]
pub(super) struct Replay {
    /// Most live frames held back at once (the outbox's frame limit): a client that never
    /// asks for its history cannot make the server hold an unbounded backlog.
    pub(super) max_held: usize,
    /// Subscriptions whose replay is pending, and since when.
    pub(super) gates: HashMap<Identifier, Instant>,
    /// Live frames held back by a gate.
    pub(super) held: VecDeque<OutFrame>,
    /// Last offset sent per (stream, subscription).
    pub(super) last_sent: HashMap<Arc<StreamKey>, u64>,
}

impl Replay {
    /// Whether a stored message may be sent (not sent before); records it.
    pub(super) fn admit(&mut self, key: &Arc<StreamKey>, offset: u64) -> bool {
        match self.last_sent.get_mut(key) {
            Some(last) if offset <= *last => false,
            Some(last) => {
                *last = offset;
                true
            }
            None => {
                self.last_sent.insert(key.clone(), offset);
                true
            }
        }
    }

    /// Puts frames in wire order: held live frames wait for their replay's end.
    pub(super) fn sequence(&mut self, frames: VecDeque<OutFrame>, out: &mut Vec<Bytes>) {
        for frame in frames {
            match frame {
                OutFrame::Plain(bytes) => out.push(bytes),
                OutFrame::Live {
                    ref key, offset, ..
                } => {
                    if self.gates.contains_key(&key.identifier) {
                        let identifier = key.identifier.clone();
                        self.held.push_back(frame);
                        if self.held.len() >= self.max_held {
                            self.release(&identifier, out);
                        }
                    } else if self.admit(key, offset) {
                        out.push(frame.into_bytes());
                    }
                }
                OutFrame::Replay { bytes, key, offset } => {
                    if self.admit(&key, offset) {
                        out.push(bytes);
                    }
                }
                OutFrame::EndReplay { bytes, identifier } => {
                    out.push(bytes);
                    self.release(&identifier, out);
                }
            }
        }
        let now = Instant::now();
        let expired: Vec<Identifier> = self
            .gates
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= REPLAY_GATE_TIMEOUT)
            .map(|(id, _)| id.clone())
            .collect();
        for identifier in expired {
            self.release(&identifier, out);
        }
    }

    /// Ends the gate of `identifier` and sends its held frames that are still new.
    pub(super) fn release(&mut self, identifier: &Identifier, out: &mut Vec<Bytes>) {
        self.gates.remove(identifier);
        let held = std::mem::take(&mut self.held);
        for frame in held {
            match &frame {
                OutFrame::Live { key, offset, .. } if &key.identifier == identifier => {
                    if self.admit(key, *offset) {
                        out.push(frame.into_bytes());
                    }
                }
                _ => self.held.push_back(frame),
            }
        }
    }

    /// Forgets a subscription.
    pub(super) fn forget(&mut self, identifier: &Identifier) {
        self.gates.remove(identifier);
        self.last_sent.retain(|k, _| &k.identifier != identifier);
        self.held
            .retain(|f| !matches!(f, OutFrame::Live { key, .. } if &key.identifier == identifier));
    }
}

impl Connection {
    pub(super) fn replay(&mut self) -> &mut Replay {
        let max_held = self.node.config.outbox.max_frames.max(1);
        if self.replay.is_none() {
            // Replayed and live frames are put in order by this task from now on.
            self.outbox.stop_direct_writes();
        }
        self.replay.get_or_insert_with(|| {
            Box::new(Replay {
                max_held,
                ..Replay::default()
            })
        })
    }

    /// Replays what the client missed on every stream of a subscription: all of it, in
    /// offset order, then `confirm_history`; or, if any stream cannot be served, nothing but
    /// `reject_history`.
    pub(super) async fn history(&mut self, identifier: Identifier, request: HistoryRequest) {
        let Some(sub) = self.subscriptions.get(&identifier) else {
            warn!(conn = self.id, %identifier, "history for unknown subscription");
            self.node.metrics.history_rejected.inc();
            self.queue(
                ServerFrame::RejectHistory {
                    identifier: &identifier,
                }
                .encode(),
            );
            return;
        };
        let streams = sub.streams.clone();
        self.replay()
            .gates
            .insert(identifier.clone(), Instant::now());
        let broker = self.node.broker.clone();
        let mut replayed = Vec::new();
        let mut failed = None;
        for stream in &streams {
            let result = match request.streams.get(stream) {
                Some(position) => broker.history_from(stream, position).await,
                None => match request.since {
                    Some(since) => broker.history_since(stream, since).await,
                    None => continue,
                },
            };
            match result {
                Ok(history) => replayed.push((stream, history)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            debug!(conn = self.id, %identifier, error = %e, "history rejected");
            if matches!(
                e,
                crate::broker::BrokerError::Unavailable(_) | crate::broker::BrokerError::Corrupt(_)
            ) {
                self.node.metrics.broker_error("history");
            }
            self.node.metrics.history_rejected.inc();
            let bytes = ServerFrame::RejectHistory {
                identifier: &identifier,
            }
            .encode();
            self.queue(OutFrame::EndReplay { bytes, identifier });
            return;
        }
        let identifier_literal = encode_json_string(identifier.as_str());
        for (stream, history) in replayed {
            let key = Arc::new(StreamKey {
                stream: Arc::from(stream.as_str()),
                identifier: identifier.clone(),
            });
            let stream_literal = encode_json_string(stream);
            let epoch_literal = encode_json_string(&history.epoch);
            for entry in history.entries {
                let Ok(message) = std::str::from_utf8(&entry.message) else {
                    continue;
                };
                self.queue(OutFrame::Replay {
                    bytes: encode_data_frame_at(
                        &identifier_literal,
                        message,
                        &stream_literal,
                        &epoch_literal,
                        entry.offset,
                    ),
                    key: key.clone(),
                    offset: entry.offset,
                });
            }
        }
        let bytes = ServerFrame::ConfirmHistory {
            identifier: &identifier,
        }
        .encode();
        self.queue(OutFrame::EndReplay { bytes, identifier });
    }
}

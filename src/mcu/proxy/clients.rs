//! Publishers and subscribers on the proxies: created with commands,
//! negotiated with payloads, closed on leave, revocation or
//! `unshareScreen` (the same API as [`super::super::direct`]).

use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::conn::{Conn, ConnError};
use super::{lock, select, HeldCandidates, ProxyMcu, Publisher, Subscriber};
use crate::api::client::SignalType;
use crate::api::proxy::{
    CommandKind, PayloadKind, ProxyClientMessage, ProxyCommand, ProxyPayload, ProxyServerMessage,
    MEDIA_AUDIO, MEDIA_SCREEN, MEDIA_VIDEO,
};
use crate::mcu::registry::Published;
use crate::mcu::{sdp, McuError, Offer, StreamType};

/// What is left of `deadline` (zero when it passed).
fn left(deadline: Instant) -> std::time::Duration {
    deadline.saturating_duration_since(Instant::now())
}

fn failed(e: ConnError) -> McuError {
    McuError::Failed(e.to_string())
}

fn raw(v: &Value) -> Box<RawValue> {
    RawValue::from_string(v.to_string()).expect("JSON value serializes")
}

/// The SDP a payload reply carries, when it is of type `want`.
fn sdp_reply(reply: ProxyServerMessage, want: SignalType) -> Result<Value, McuError> {
    reply
        .payload
        .and_then(|p| p.payload)
        .and_then(|raw| serde_json::from_str::<Value>(raw.get()).ok())
        .filter(|v| SignalType::of(&v["type"]) == want && v["sdp"].is_string())
        .ok_or_else(|| McuError::Failed(format!("the proxy's reply has no {}", want.as_str())))
}

/// The stream selection of a client payload (`substream`, `temporal`,
/// `audio`, `video`), `None` when it has none.
fn selection_of(payload: &Value) -> Option<Value> {
    let mut out = Map::new();
    for key in ["substream", "temporal"] {
        if let Some(v) = payload.get(key).and_then(Value::as_i64) {
            out.insert(key.into(), json!(v));
        }
    }
    for key in ["audio", "video"] {
        if let Some(v) = payload.get(key).and_then(Value::as_bool) {
            out.insert(key.into(), json!(v));
        }
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

impl ProxyMcu {
    fn conn(&self, i: usize) -> &Arc<Conn> {
        &self.conns[i]
    }

    /// A payload request for client `id` on proxy `conn`.
    async fn payload(
        &self,
        conn: usize,
        kind: PayloadKind,
        id: &str,
        payload: Option<Value>,
    ) -> Result<ProxyServerMessage, ConnError> {
        let timeout = self.config().timeout;
        let body = ProxyPayload::request(kind, id, payload.as_ref().map(raw));
        self.conn(conn)
            .request(|rid| ProxyClientMessage::payload(rid, body), timeout)
            .await
    }

    /// A delete command; failures only logged (the client is gone here).
    async fn delete(&self, conn: usize, kind: CommandKind, id: &str) {
        let c = self.conn(conn);
        let mut cmd = ProxyCommand::new(kind);
        cmd.client_id = id.to_string();
        if let Err(e) = c
            .request(
                |rid| ProxyClientMessage::command(rid, cmd),
                c.proxy_timeout(),
            )
            .await
        {
            tracing::debug!(proxy = %c.url, client = id, "delete on proxy failed: {e}");
        }
    }

    /// Publishes (or re-negotiates) a session's stream; `deliver` gets the
    /// publisher's sid and the answer.
    pub async fn publish(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        offer: Offer,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        let deadline = Instant::now() + self.config().timeout;
        let (publisher, created) = match self.clients.publisher(session, stream) {
            Some(p) if self.conn(p.conn).connected() => (p, false),
            stale => {
                if let Some(p) = stale {
                    // Its proxy is away: publish again elsewhere.
                    tracing::info!(session = %session, proxy = %self.conn(p.conn).url, "publisher's proxy is not connected, publishing anew");
                    let lost = self.forget_publisher(&p);
                    self.remember_moved(&p, &lost);
                }
                let p = self
                    .create_publisher(session, stream, &offer, deadline)
                    .await?;
                (p, true)
            }
        };
        // The client's payload as sent, with the filtered SDP.
        let mut payload = offer.payload.clone();
        if let Value::Object(jsep) = sdp::jsep("offer", &offer.sdp, &self.config()) {
            payload.extend(jsep);
        }
        publisher.held.hold();
        let answer = match self
            .payload(
                publisher.conn,
                PayloadKind::Offer,
                &publisher.id,
                Some(Value::Object(payload)),
            )
            .await
        {
            Ok(reply) => sdp_reply(reply, SignalType::Answer),
            Err(e) => Err(failed(e)),
        };
        let delivered = |answer: &Value| {
            *lock(&publisher.media) = offer.media;
            deliver(&publisher.sid, answer);
        };
        let out = |c| {
            let _ = self.signals.send(publisher.candidate_signal(c));
        };
        let r = publisher.held.after_reply(answer, delivered, out);
        if created && r.is_ok() {
            self.resubscribe_moved(session, stream);
        }
        r
    }

    /// Creates a publisher on the best proxy that takes it (§3); the next
    /// one after an error reply or no answer within `proxytimeout`, until
    /// `deadline`.
    async fn create_publisher(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        offer: &Offer,
        deadline: Instant,
    ) -> Result<Arc<Publisher>, McuError> {
        let bitrate = offer.bitrate_within(stream, &self.config());
        let mediatypes = match stream {
            StreamType::Screen => MEDIA_SCREEN,
            StreamType::Video => {
                (if offer.media.audio { MEDIA_AUDIO } else { 0 })
                    | (if offer.media.video { MEDIA_VIDEO } else { 0 })
            }
        };
        let states: Vec<_> = self.conns.iter().map(|c| c.state()).collect();
        // The client's continents include [continent-overrides]; a
        // proxy's are its country's own (as the Go server compares them).
        let continents = |c: &str| match &offer.country {
            Some(mine) if **mine == *c => offer.continents.iter().map(|x| x.to_string()).collect(),
            _ => crate::geoip::continents::of(c)
                .map(|x| vec![x.to_string()])
                .unwrap_or_default(),
        };
        for i in select::order(&states, offer.country.as_deref(), &continents) {
            let c = self.conn(i);
            let t = left(deadline).min(c.proxy_timeout());
            if t.is_zero() {
                break;
            }
            let mut cmd = ProxyCommand::new(CommandKind::CreatePublisher);
            cmd.sid = offer.sid.clone();
            cmd.stream_type = stream.as_str().to_string();
            cmd.bitrate = bitrate;
            cmd.mediatypes = mediatypes;
            let id = match c
                .request(|rid| ProxyClientMessage::command(rid, cmd), t)
                .await
            {
                Ok(r) => r.command.map(|c| c.id).filter(|id| !id.is_empty()),
                Err(e) => {
                    tracing::warn!(proxy = %c.url, session = %session, "create-publisher failed ({e}), trying the next proxy");
                    continue;
                }
            };
            let Some(id) = id else {
                tracing::warn!(proxy = %c.url, "create-publisher answered without id, trying the next proxy");
                continue;
            };
            let p = Arc::new(Publisher {
                session: session.clone(),
                stream,
                conn: i,
                id,
                sid: offer.sid.clone(),
                media: Mutex::new(offer.media),
                held: HeldCandidates::default(),
            });
            if let Some(old) = self.register_publisher(&p) {
                self.close_publisher(old).await;
            }
            self.clients.notify_published();
            return Ok(p);
        }
        self.metrics
            .no_backend_available_total
            .with_label_values(&[stream.as_str()])
            .inc();
        Err(McuError::NotFound("no proxy took the publisher".into()))
    }

    fn register_publisher(&self, p: &Arc<Publisher>) -> Option<Arc<Publisher>> {
        let replaced = self.clients.add_publisher(p, || Ok(())).ok().flatten();
        tracing::debug!(session = %p.session, stream = p.stream.as_str(), proxy = %self.conn(p.conn).url, id = %p.id, "publisher created");
        replaced
    }

    /// Drops a publisher and the subscribers of its stream from the
    /// registry; returns those subscribers (empty when it was gone).
    pub(super) fn forget_publisher(&self, p: &Arc<Publisher>) -> Vec<Arc<Subscriber>> {
        self.clients.forget_publisher(p).unwrap_or_default()
    }

    /// Forgets a publisher and deletes it (and its subscribers here) on
    /// its proxy.
    pub(super) async fn close_publisher(&self, p: Arc<Publisher>) {
        let subs = self.forget_publisher(&p);
        self.delete(p.conn, CommandKind::DeletePublisher, &p.id)
            .await;
        for s in subs {
            self.delete(s.conn, CommandKind::DeleteSubscriber, &s.id)
                .await;
        }
    }

    pub(in crate::mcu) async fn close_subscriber(&self, s: Arc<Subscriber>) {
        if self.clients.forget_subscriber(&s) {
            self.delete(s.conn, CommandKind::DeleteSubscriber, &s.id)
                .await;
        }
    }

    /// A candidate of a publisher (`None`: end of candidates).
    pub async fn publisher_candidate(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let p = self.clients.publisher_checked(session, stream, sid)?;
        self.send_candidate(p.conn, &p.id, candidate).await
    }

    async fn send_candidate(
        &self,
        conn: usize,
        id: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let (kind, payload) = match candidate {
            Some(c) => (PayloadKind::Candidate, Some(json!({"candidate": c}))),
            None => (PayloadKind::EndOfCandidates, None),
        };
        self.payload(conn, kind, id, payload)
            .await
            .map(|_| ())
            .map_err(failed)
    }

    /// Closes a session's publisher of `stream`, if any.
    pub async fn close_stream(&self, session: &Arc<str>, stream: StreamType) {
        crate::mcu::backend::close_stream(self, session, stream).await;
    }

    /// Closes everything of a session.
    pub async fn close_session(&self, session: &Arc<str>) {
        lock(&self.moved).forget_session(session);
        let (pubs, subs) = self.clients.of_session(session);
        for p in pubs {
            self.close_publisher(p).await;
        }
        for s in subs {
            self.close_subscriber(s).await;
        }
    }
}

#[path = "subscribe.rs"]
mod subscribe;

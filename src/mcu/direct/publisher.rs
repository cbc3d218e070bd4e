//! Publishers: one videoroom room per published stream, created on the
//! first offer, configured with every offer, closed on revocation, leave or
//! `unshareScreen`.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::api::client::SignalType;
use crate::mcu::registry::Published;
use tokio::sync::watch;

use super::super::janus::{plugin_data, JanusError};
use super::super::{lock, sdp, McuError, Offer, StreamType};
use super::{JanusMcu, Publisher, Subscriber};

impl JanusMcu {
    /// Publishes (or re-negotiates) a session's stream; returns the
    /// publisher's sid and Janus's answer jsep.
    pub async fn publish(
        self: &Arc<Self>,
        session: &Arc<str>,
        stream: StreamType,
        offer: Offer,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        let publisher = match self.clients.publisher(session, stream) {
            Some(p) => p,
            None => {
                self.refuse_if_handed_over()?;
                self.create_publisher(session, stream, &offer).await?
            }
        };
        let jsep = sdp::jsep("offer", &offer.sdp, &self.config());
        // Janus may trickle before its answer has reached the client.
        publisher.held.hold();
        let r = self
            .gw
            .message(
                publisher.handle,
                json!({"request": "configure", "audio": true, "video": true, "data": true}),
                Some(jsep),
                true,
            )
            .await;
        let answer = r.map_err(McuError::from).and_then(|r| {
            r.get("jsep")
                .filter(|j| SignalType::of(&j["type"]) == SignalType::Answer)
                .cloned()
                .ok_or_else(|| McuError::Failed("configure brought no answer".into()))
        });
        let delivered = |answer: &Value| {
            *lock(&publisher.media) = offer.media;
            deliver(&publisher.sid, answer);
        };
        let out = |c| {
            let _ = self.signals.send(publisher.candidate_signal(c));
        };
        publisher.held.after_reply(answer, delivered, out)
    }

    async fn create_publisher(
        self: &Arc<Self>,
        session: &Arc<str>,
        stream: StreamType,
        offer: &Offer,
    ) -> Result<Arc<Publisher>, McuError> {
        let not_found = |e: JanusError| McuError::NotFound(e.to_string());
        let handle = self.gw.attach().await.map_err(not_found)?;
        let room = self
            .create_room(handle, self.create_request(session, stream, offer))
            .await
            .map_err(not_found)?;
        let join =
            json!({"request": "join", "ptype": "publisher", "room": room, "id": stream.feed()});
        if let Err(e) = self.gw.message(handle, join, None, true).await {
            self.destroy_room(handle, room).await;
            return Err(not_found(e));
        }
        let publisher = Arc::new(Publisher {
            session: session.clone(),
            stream,
            handle,
            room,
            sid: offer.sid.clone(),
            media: Mutex::new(offer.media),
            up: watch::Sender::new(false),
            held: Default::default(),
            receiving: Default::default(),
        });
        let replaced = match self.register_publisher(&publisher) {
            Ok(replaced) => replaced,
            Err(e) => {
                // Handed over meanwhile: the successor does not know it.
                self.destroy_room(handle, room).await;
                return Err(e);
            }
        };
        if let Some(old) = replaced {
            self.close_publisher(old).await;
        }
        self.clients.notify_published();
        self.resubscribe_to(session, stream);
        Ok(publisher)
    }

    /// The `create` of a publisher's room: its bitrate (the offer's, within
    /// the backend's and `[mcu]`'s caps) and the codecs the offer asks for.
    fn create_request(&self, session: &Arc<str>, stream: StreamType, offer: &Offer) -> Value {
        let bitrate = offer.bitrate_within(stream, &self.config());
        let mut body = json!({
            "request": "create",
            "description": format!("{session}|{}", stream.as_str()),
            "publishers": 1,
            "videoorient_ext": false,
            "bitrate": bitrate,
        });
        for (key, value) in ["audiocodec", "videocodec", "vp9_profile", "h264_profile"]
            .iter()
            .zip(&offer.codecs)
        {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                body[*key] = json!(v);
            }
        }
        body
    }

    /// Creates the room of `handle`'s publisher; detaches the handle when
    /// that fails.
    async fn create_room(&self, handle: u64, body: Value) -> Result<u64, JanusError> {
        match self.gw.message(handle, body, None, false).await {
            Ok(r) => match plugin_data(&r)["room"].as_u64() {
                Some(room) => Ok(room),
                None => {
                    let _ = self.gw.detach(handle).await;
                    Err(JanusError::Protocol("create without room".into()))
                }
            },
            Err(e) => {
                let _ = self.gw.detach(handle).await;
                Err(e)
            }
        }
    }

    /// Registers a publisher that joined its room, unless this process
    /// handed its media over; returns the one of the same session and
    /// stream it replaces.
    fn register_publisher(
        &self,
        publisher: &Arc<Publisher>,
    ) -> Result<Option<Arc<Publisher>>, McuError> {
        let (session, stream) = (&publisher.session, publisher.stream);
        let replaced = self
            .clients
            .add_publisher(publisher, || self.refuse_if_handed_over())?;
        let (room, handle) = (publisher.room, publisher.handle);
        tracing::debug!(session = %session, stream = stream.as_str(), room, handle, "publisher created");
        Ok(replaced)
    }

    /// Destroys a publisher's room and detaches its handle.
    pub(super) async fn destroy_room(&self, handle: u64, room: u64) {
        if let Err(e) = self
            .gw
            .message(
                handle,
                json!({"request": "destroy", "room": room}),
                None,
                false,
            )
            .await
        {
            tracing::debug!(room, "could not destroy room: {e}");
        }
        if let Err(e) = self.gw.detach(handle).await {
            tracing::debug!(handle, "could not detach: {e}");
        }
    }

    /// Forgets a publisher (and the subscribers of its stream on this
    /// process) and removes its room from Janus.
    pub(super) async fn close_publisher(&self, p: Arc<Publisher>) {
        let subs = self.forget_publisher(&p);
        self.destroy_room(p.handle, p.room).await;
        for s in subs {
            let _ = self.gw.detach(s.handle).await;
        }
    }

    /// Drops a publisher and its subscribers from the registry; returns the
    /// subscribers whose handles must go.
    pub(super) fn forget_publisher(&self, p: &Arc<Publisher>) -> Vec<Arc<Subscriber>> {
        let Some(subs) = self.clients.forget_publisher(p) else {
            return Vec::new();
        };
        self.changed();
        subs
    }

    /// A candidate of a publisher (`sid` empty or the publisher's);
    /// `client_not_found` without publisher.
    pub async fn publisher_candidate(
        &self,
        session: &Arc<str>,
        stream: StreamType,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let p = self.clients.publisher_checked(session, stream, sid)?;
        match candidate {
            Some(c) => Ok(self.gw.trickle(p.handle, c).await?),
            None => Ok(()),
        }
    }

    /// Closes a session's publisher of `stream`, if any.
    pub async fn close_stream(&self, session: &Arc<str>, stream: StreamType) {
        crate::mcu::backend::close_stream(self, session, stream).await;
    }
}

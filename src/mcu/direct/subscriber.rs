//! Subscribers: a handle per (subscriber, publisher, stream) joined to the
//! publisher's room, started with the client's answer, reconfigured by
//! `selectStream` and `requestoffer` with the current sid.

use std::sync::Arc;
use std::time::Duration;

use crate::mcu::registry::Subscribed;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::time::Instant;

use super::super::janus::JanusError;
use super::super::{sdp, HeldCandidates, McuError, StreamType, SubKey};
use super::{JanusMcu, Owner, Publisher, Subscriber};

impl JanusMcu {
    pub(super) fn forget_subscriber(&self, s: &Arc<Subscriber>) -> bool {
        if !self.clients.forget_subscriber(s) {
            return false;
        }
        self.changed();
        true
    }

    pub(super) async fn close_subscriber(&self, s: Arc<Subscriber>) {
        if self.forget_subscriber(&s) {
            let _ = self.gw.detach(s.handle).await;
        }
    }

    /// `requestoffer`/`sendoffer`: subscribes `subscriber` to a publisher's
    /// stream, or renegotiates when `sid` is the current subscriber's.
    /// `deliver` gets the subscriber's sid and Janus's offer jsep; the
    /// candidates Janus trickled meanwhile go out after it.
    pub async fn subscribe(
        &self,
        key: &SubKey,
        sid: &str,
        selection: &Value,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        let existing = self.clients.subscriber(key);
        if let Some(s) = existing
            .as_ref()
            .filter(|s| !sid.is_empty() && sid == s.sid())
        {
            return self.renegotiate(s, selection, deliver).await;
        }
        self.refuse_if_handed_over()?;
        if let Some(s) = existing {
            self.close_subscriber(s).await;
        }
        let deadline = Instant::now() + self.config().timeout;
        let p = self
            .clients
            .wait_publisher(&key.1, key.2, deadline)
            .await
            .ok_or_else(|| McuError::NotFound("publisher did not appear in time".into()))?;
        let s = self
            .attach_subscriber(key)
            .await
            .map_err(|e| McuError::NotFound(e.to_string()))?;
        let (s, offer) = self.join_publisher(key, &p, s, selection, deadline).await?;
        let admit = || self.refuse_if_handed_over();
        crate::mcu::backend::register_subscriber(self, &p, &s, admit).await?;
        s.deliver_offer(&self.signals, Ok(offer), deliver)
    }

    /// A new offer for the current subscriber (`configure` with `update`).
    async fn renegotiate(
        &self,
        s: &Subscriber,
        selection: &Value,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        let mut body = json!({"request": "configure", "update": true});
        add_selection(&mut body, selection);
        s.held.hold();
        let offer = self
            .gw
            .message(s.handle, body, None, true)
            .await
            .map_err(McuError::from)
            .and_then(|r| {
                r.get("jsep")
                    .cloned()
                    .ok_or_else(|| McuError::Failed("update brought no offer".into()))
            });
        s.deliver_offer(&self.signals, offer, deliver)
    }

    /// Joins subscriber `s` to publisher `p`'s room and returns the handle
    /// that joined with Janus's offer. Waits (until `deadline`) while the
    /// publisher is not sending yet; attaches a new handle when Janus
    /// says this one already joined. On failure the handle is detached.
    async fn join_publisher(
        &self,
        key: &SubKey,
        p: &Publisher,
        mut s: Arc<Subscriber>,
        selection: &Value,
        deadline: Instant,
    ) -> Result<(Arc<Subscriber>, Value), McuError> {
        let mut up = p.up.subscribe();
        loop {
            let body = join_request(p.room, key.2, selection);
            match self.gw.message(s.handle, body, None, true).await {
                Ok(r) => {
                    let Some(offer) = r.get("jsep").cloned() else {
                        self.abandon(&s).await;
                        return Err(McuError::Failed("join brought no offer".into()));
                    };
                    return Ok((s, offer));
                }
                Err(JanusError::Plugin { code: 428, .. }) => {
                    // The publisher's PeerConnection is not up yet: wait
                    // for its `webrtcup` (or a moment when it already was).
                    if !wait_until_up(&mut up, deadline).await {
                        self.abandon(&s).await;
                        return Err(McuError::Failed("publisher is not sending".into()));
                    }
                }
                Err(JanusError::Plugin { code: 425, .. }) => {
                    self.abandon(&s).await;
                    s = self.attach_subscriber(key).await?;
                }
                Err(e) => {
                    self.abandon(&s).await;
                    return Err(e.into());
                }
            }
        }
    }

    /// A new handle for a subscriber, registered before its join so that
    /// nothing Janus trickles for it is missed (held until the offer).
    async fn attach_subscriber(&self, key: &SubKey) -> Result<Arc<Subscriber>, JanusError> {
        let handle = self.gw.attach().await?;
        let s = Arc::new(Subscriber {
            key: key.clone(),
            handle,
            held: HeldCandidates::holding(),
            connected: Default::default(),
        });
        self.clients
            .lock()
            .by_id
            .insert(handle, Owner::Joining(s.clone()));
        Ok(s)
    }

    /// Detaches a subscriber handle whose join did not succeed.
    pub(super) async fn abandon(&self, s: &Subscriber) {
        self.clients.lock().by_id.remove(&s.handle);
        let _ = self.gw.detach(s.handle).await;
    }

    /// A subscriber's `answer`: Janus `start`.
    pub async fn subscriber_answer(
        &self,
        key: &SubKey,
        sid: &str,
        sdp_text: &str,
    ) -> Result<(), McuError> {
        let s = self.clients.subscriber_checked(key, sid)?;
        let jsep = sdp::jsep("answer", sdp_text, &self.config());
        self.gw
            .message(s.handle, json!({"request": "start"}), Some(jsep), true)
            .await?;
        Ok(())
    }

    /// A subscriber's candidate (None: end of candidates, nothing sent).
    pub async fn subscriber_candidate(
        &self,
        key: &SubKey,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let s = self.clients.subscriber_checked(key, sid)?;
        match candidate {
            Some(c) => Ok(self.gw.trickle(s.handle, c).await?),
            None => Ok(()),
        }
    }

    /// `selectStream`: substream/temporal layer, audio/video on or off.
    pub async fn select_stream(&self, key: &SubKey, payload: &Value) -> Result<(), McuError> {
        let s = self.clients.subscriber_checked(key, "")?;
        let mut body = json!({"request": "configure"});
        if !add_selection(&mut body, payload) {
            return Ok(());
        }
        self.gw.message(s.handle, body, None, true).await?;
        Ok(())
    }
}

/// The `join` of a subscriber to a publisher's `room`. Janus 1.x reads the
/// simulcast layers of a join only inside the `streams` items (top-level
/// ones only in `configure`).
fn join_request(room: u64, stream: StreamType, selection: &Value) -> Value {
    let mut feed = json!({"feed": stream.feed()});
    let mut layers = json!({});
    add_selection(&mut layers, selection);
    for key in ["substream", "temporal"] {
        if let Some(v) = layers.get(key) {
            feed[key] = v.clone();
        }
    }
    let mut body = json!({
        "request": "join", "ptype": "subscriber", "room": room,
        "streams": [feed],
    });
    for key in ["audio", "video"] {
        if let Some(v) = layers.get(key) {
            body[key] = v.clone();
        }
    }
    body
}

/// Waits (until `deadline`) for the publisher's PeerConnection to be up,
/// or a moment when it already is; false when the deadline passed.
async fn wait_until_up(up: &mut watch::Receiver<bool>, deadline: Instant) -> bool {
    let is_up = *up.borrow();
    if is_up {
        let until = deadline.min(Instant::now() + Duration::from_millis(200));
        tokio::time::sleep_until(until).await;
        Instant::now() < deadline
    } else {
        matches!(
            tokio::time::timeout_at(deadline, up.wait_for(|u| *u)).await,
            Ok(Ok(_))
        )
    }
}

/// Copies `substream`, `temporal` (integers) and `audio`, `video`
/// (booleans) from a client payload; false when there was none.
fn add_selection(body: &mut Value, payload: &Value) -> bool {
    let mut any = false;
    for key in ["substream", "temporal"] {
        if let Some(v) = payload.get(key).and_then(Value::as_i64) {
            body[key] = json!(v);
            any = true;
        }
    }
    for key in ["audio", "video"] {
        if let Some(v) = payload.get(key).and_then(Value::as_bool) {
            body[key] = json!(v);
            any = true;
        }
    }
    any
}

//! Subscribers: a handle per (subscriber, publisher, stream) joined to the
//! publisher's room, started with the client's answer, reconfigured by
//! `selectStream` and `requestoffer` with the current sid.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::janus::JanusError;
use super::{lock, sdp, Mcu, McuError, Owner, Publisher, StreamType, SubKey, Subscriber};

impl Mcu {
    pub(super) fn forget_subscriber(&self, s: &Arc<Subscriber>) -> bool {
        let mut reg = lock(&self.reg);
        if reg
            .subscribers
            .get(&s.key)
            .is_some_and(|x| Arc::ptr_eq(x, s))
        {
            reg.subscribers.remove(&s.key);
        }
        if reg.handles.remove(&s.handle).is_none() {
            return false;
        }
        self.metrics
            .subscribers
            .with_label_values(&[s.key.2.as_str()])
            .dec();
        true
    }

    pub(super) async fn close_subscriber(&self, s: Arc<Subscriber>) {
        if self.forget_subscriber(&s) {
            let _ = self.gw.detach(s.handle).await;
        }
    }

    /// Waits (until `deadline`) for a publisher of `publisher`'s `stream`.
    async fn wait_publisher(
        &self,
        publisher: &Arc<str>,
        stream: StreamType,
        deadline: Instant,
    ) -> Option<Arc<Publisher>> {
        let mut counted = false;
        loop {
            let notified = self.published.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(p) = self.publisher(publisher, stream) {
                return Some(p);
            }
            if !counted {
                counted = true;
                self.metrics
                    .nopublisher_total
                    .with_label_values(&[stream.as_str()])
                    .inc();
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }

    /// `requestoffer`/`sendoffer`: subscribes `subscriber` to a publisher's
    /// stream, or renegotiates when `sid` is the current subscriber's.
    /// Returns the subscriber's sid and Janus's offer jsep.
    pub async fn subscribe(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        selection: &Value,
    ) -> Result<(String, Value), McuError> {
        let key: SubKey = (subscriber.clone(), publisher.clone(), stream);
        if let Some(s) = self.subscriber(&key) {
            if !sid.is_empty() && sid == s.sid() {
                let mut body = json!({"request": "configure", "update": true});
                add_selection(&mut body, selection);
                let r = self.gw.message(s.handle, body, None, true).await?;
                let offer = r
                    .get("jsep")
                    .cloned()
                    .ok_or_else(|| McuError::Failed("update brought no offer".into()))?;
                return Ok((s.sid(), offer));
            }
            self.close_subscriber(s).await;
        }
        let deadline = Instant::now() + self.cfg.timeout;
        let p = self
            .wait_publisher(publisher, stream, deadline)
            .await
            .ok_or_else(|| McuError::NotFound("publisher did not appear in time".into()))?;
        let mut handle = self
            .gw
            .attach()
            .await
            .map_err(|e| McuError::NotFound(e.to_string()))?;
        let mut up = p.up.subscribe();
        loop {
            let mut body = json!({
                "request": "join", "ptype": "subscriber", "room": p.room,
                "streams": [{"feed": stream.feed()}],
            });
            add_selection(&mut body, selection);
            match self.gw.message(handle, body, None, true).await {
                Ok(r) => {
                    let Some(offer) = r.get("jsep").cloned() else {
                        let _ = self.gw.detach(handle).await;
                        return Err(McuError::Failed("join brought no offer".into()));
                    };
                    let s = Arc::new(Subscriber {
                        key: key.clone(),
                        handle,
                    });
                    let (old, publisher_gone) = {
                        let mut reg = lock(&self.reg);
                        let gone = !reg
                            .publishers
                            .get(&(publisher.clone(), stream))
                            .is_some_and(|x| Arc::ptr_eq(x, &p));
                        if gone {
                            (None, true)
                        } else {
                            reg.handles.insert(handle, Owner::Subscriber(s.clone()));
                            (reg.subscribers.insert(key.clone(), s.clone()), false)
                        }
                    };
                    if publisher_gone {
                        let _ = self.gw.detach(handle).await;
                        return Err(McuError::NotFound("publisher closed".into()));
                    }
                    let label = [stream.as_str()];
                    self.metrics.subscribers.with_label_values(&label).inc();
                    self.metrics
                        .subscribers_total
                        .with_label_values(&label)
                        .inc();
                    if let Some(old) = old {
                        self.close_subscriber(old).await;
                    }
                    return Ok((s.sid(), offer));
                }
                Err(JanusError::Plugin { code: 428, .. }) => {
                    // The publisher's PeerConnection is not up yet: wait
                    // for its `webrtcup` (or a moment when it already was).
                    let is_up = *up.borrow();
                    let waited = if is_up {
                        let until = deadline.min(Instant::now() + Duration::from_millis(200));
                        tokio::time::sleep_until(until).await;
                        Instant::now() < deadline
                    } else {
                        matches!(
                            tokio::time::timeout_at(deadline, up.wait_for(|u| *u)).await,
                            Ok(Ok(_))
                        )
                    };
                    if !waited {
                        let _ = self.gw.detach(handle).await;
                        return Err(McuError::Failed("publisher is not sending".into()));
                    }
                }
                Err(JanusError::Plugin { code: 425, .. }) => {
                    let _ = self.gw.detach(handle).await;
                    handle = self.gw.attach().await?;
                }
                Err(e) => {
                    let _ = self.gw.detach(handle).await;
                    return Err(e.into());
                }
            }
        }
    }

    pub(super) fn subscriber_checked(
        &self,
        key: &SubKey,
        sid: &str,
    ) -> Result<Arc<Subscriber>, McuError> {
        let s = self
            .subscriber(key)
            .ok_or_else(|| McuError::NotFound("no subscriber".into()))?;
        if !sid.is_empty() && sid != s.sid() {
            return Err(McuError::Failed(format!(
                "sid {sid} is not the subscriber's"
            )));
        }
        Ok(s)
    }

    /// A subscriber's `answer`: Janus `start`.
    pub async fn subscriber_answer(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        sdp_text: &str,
    ) -> Result<(), McuError> {
        let s = self.subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), sid)?;
        let jsep = json!({
            "type": "answer",
            "sdp": sdp::filter(sdp_text, &self.cfg.allowed_candidates, &self.cfg.blocked_candidates),
        });
        self.gw
            .message(s.handle, json!({"request": "start"}), Some(jsep), true)
            .await?;
        Ok(())
    }

    /// A subscriber's candidate (None: end of candidates, nothing sent).
    pub async fn subscriber_candidate(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let s = self.subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), sid)?;
        match candidate {
            Some(c) => Ok(self.gw.trickle(s.handle, c).await?),
            None => Ok(()),
        }
    }

    /// `selectStream`: substream/temporal layer, audio/video on or off.
    pub async fn select_stream(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        payload: &Value,
    ) -> Result<(), McuError> {
        let s = self.subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), "")?;
        let mut body = json!({"request": "configure"});
        if !add_selection(&mut body, payload) {
            return Ok(());
        }
        self.gw.message(s.handle, body, None, true).await?;
        Ok(())
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

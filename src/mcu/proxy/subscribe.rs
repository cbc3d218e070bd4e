//! Subscribers: created on the proxy of their publisher (waiting up to
//! `[mcu] timeout` for a publisher that is not there yet), offered with
//! `requestoffer`, started with the client's answer, reconfigured with
//! `selectStream` and a `requestoffer` with the current sid.

use std::sync::Arc;

use serde_json::{json, Value};
use tokio::time::Instant;

use super::super::{HeldCandidates, Owner, ProxyMcu, Subscriber};
use super::{failed, left, sdp_reply, selection_of};
use crate::api::client::SignalType;
use crate::api::proxy::{CommandKind, PayloadKind, ProxyClientMessage, ProxyCommand};
use crate::mcu::{sdp, McuError, StreamType, SubKey};

impl ProxyMcu {
    /// `requestoffer`/`sendoffer`: subscribes `subscriber` to a publisher's
    /// stream, or renegotiates when `sid` is the current subscriber's.
    /// `deliver` gets the subscriber's sid and the proxy's offer; the
    /// candidates trickled meanwhile go out after it.
    pub async fn subscribe(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        selection: &Value,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        let key: SubKey = (subscriber.clone(), publisher.clone(), stream);
        if let Some(s) = self.clients.subscriber(&key) {
            if !sid.is_empty() && sid == s.id && self.conn(s.conn).connected() {
                return self.renegotiate(&s, selection, deliver).await;
            }
            self.close_subscriber(s).await;
        }
        let deadline = Instant::now() + self.config().timeout;
        let p = self
            .clients
            .wait_publisher(publisher, stream, deadline)
            .await
            .ok_or_else(|| McuError::NotFound("publisher did not appear in time".into()))?;
        let c = self.conn(p.conn);
        let mut cmd = ProxyCommand::new(CommandKind::CreateSubscriber);
        cmd.stream_type = stream.as_str().to_string();
        cmd.publisher_id = p.id.clone();
        let id = c
            .request(|rid| ProxyClientMessage::command(rid, cmd), left(deadline))
            .await
            .map_err(|e| McuError::NotFound(format!("create-subscriber: {e}")))?
            .command
            .map(|c| c.id)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| McuError::NotFound("create-subscriber answered without id".into()))?;
        let s = Arc::new(Subscriber {
            key: key.clone(),
            conn: p.conn,
            id,
            held: HeldCandidates::holding(),
        });
        // Known before its offer, so that no candidate is missed.
        self.clients
            .lock()
            .by_id
            .insert((s.conn, s.id.clone()), Owner::Joining(s.clone()));
        let offer = match self
            .payload(
                s.conn,
                PayloadKind::RequestOffer,
                &s.id,
                selection_of(selection),
            )
            .await
        {
            Ok(reply) => sdp_reply(reply, SignalType::Offer),
            Err(e) => Err(failed(e)),
        };
        let offer = match offer {
            Ok(o) => o,
            Err(e) => {
                self.abandon(&s).await;
                return Err(e);
            }
        };
        let old = match self.clients.add_subscriber(&p, &s, || Ok(())) {
            Ok(old) => old,
            Err(e) => {
                self.abandon(&s).await;
                return Err(e);
            }
        };
        if let Some(old) = old {
            self.close_subscriber(old).await;
        }
        deliver(&s.id, &offer);
        for c in s.held.release() {
            self.subscriber_candidate_out(&s, c);
        }
        Ok(())
    }

    /// A new offer for the current subscriber.
    async fn renegotiate(
        &self,
        s: &Subscriber,
        selection: &Value,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        s.held.hold();
        let offer = match self
            .payload(
                s.conn,
                PayloadKind::RequestOffer,
                &s.id,
                selection_of(selection),
            )
            .await
        {
            Ok(reply) => sdp_reply(reply, SignalType::Offer),
            Err(e) => Err(failed(e)),
        };
        if let Ok(o) = &offer {
            deliver(&s.id, o);
        }
        for c in s.held.release() {
            if offer.is_ok() {
                self.subscriber_candidate_out(s, c);
            }
        }
        offer.map(|_| ())
    }

    /// Deletes a subscriber whose offer did not come.
    async fn abandon(&self, s: &Arc<Subscriber>) {
        self.clients.lock().by_id.remove(&(s.conn, s.id.clone()));
        self.delete(s.conn, CommandKind::DeleteSubscriber, &s.id)
            .await;
    }

    /// A subscriber's `answer`.
    pub async fn subscriber_answer(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        sdp_text: &str,
    ) -> Result<(), McuError> {
        let s = self
            .clients
            .subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), sid)?;
        let cfg = self.config();
        let answer = json!({
            "type": "answer",
            "sdp": sdp::filter(sdp_text, &cfg.allowed_candidates, &cfg.blocked_candidates),
        });
        self.payload(s.conn, PayloadKind::Answer, &s.id, Some(answer))
            .await
            .map(|_| ())
            .map_err(failed)
    }

    /// A subscriber's candidate (`None`: end of candidates).
    pub async fn subscriber_candidate(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let s = self
            .clients
            .subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), sid)?;
        self.send_candidate(s.conn, &s.id, candidate).await
    }

    /// `selectStream`: substream/temporal layer, audio/video on or off.
    pub async fn select_stream(
        &self,
        subscriber: &Arc<str>,
        publisher: &Arc<str>,
        stream: StreamType,
        payload: &Value,
    ) -> Result<(), McuError> {
        let s = self
            .clients
            .subscriber_checked(&(subscriber.clone(), publisher.clone(), stream), "")?;
        let Some(selection) = selection_of(payload) else {
            return Ok(());
        };
        self.payload(s.conn, PayloadKind::SelectStream, &s.id, Some(selection))
            .await
            .map(|_| ())
            .map_err(failed)
    }
}

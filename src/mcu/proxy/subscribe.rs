//! Subscribers: created on the proxy of their publisher (waiting up to
//! `[mcu] timeout` for a publisher that is not there yet), offered with
//! `requestoffer`, started with the client's answer, reconfigured with
//! `selectStream` and a `requestoffer` with the current sid.

use std::sync::Arc;

use crate::mcu::registry::Subscribed;
use serde_json::Value;
use tokio::time::Instant;

use super::super::{HeldCandidates, Owner, ProxyMcu, Subscriber};
use super::{failed, left, sdp_reply, selection_of};
use crate::api::client::SignalType;
use crate::api::proxy::{CommandKind, PayloadKind, ProxyClientMessage, ProxyCommand};
use crate::mcu::{sdp, McuError, SubKey};

impl ProxyMcu {
    /// `requestoffer`/`sendoffer`: subscribes `subscriber` to a publisher's
    /// stream, or renegotiates when `sid` is the current subscriber's.
    /// `deliver` gets the subscriber's sid and the proxy's offer; the
    /// candidates trickled meanwhile go out after it.
    pub async fn subscribe(
        &self,
        key: &SubKey,
        sid: &str,
        selection: &Value,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        let stream = key.2;
        if let Some(s) = self.clients.subscriber(key) {
            if !sid.is_empty() && sid == s.id && self.conn(s.conn).connected() {
                return self.renegotiate(&s, selection, deliver).await;
            }
            self.close_subscriber(s).await;
        }
        let deadline = Instant::now() + self.config().timeout;
        let p = self
            .clients
            .wait_publisher(&key.1, stream, deadline)
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
        let offer = match self.request_offer(&s, selection).await {
            Ok(o) => o,
            Err(e) => {
                self.abandon(&s).await;
                return Err(e);
            }
        };
        let admit = || Ok(());
        crate::mcu::backend::register_subscriber(self, &p, &s, admit).await?;
        s.deliver_offer(&self.signals, Ok(offer), deliver)
    }

    /// A new offer for the current subscriber.
    async fn renegotiate(
        &self,
        s: &Subscriber,
        selection: &Value,
        deliver: impl FnOnce(&str, &Value),
    ) -> Result<(), McuError> {
        s.held.hold();
        let offer = self.request_offer(s, selection).await;
        s.deliver_offer(&self.signals, offer, deliver)
    }

    /// The proxy's offer for subscriber `s` (with the stream `selection`).
    async fn request_offer(&self, s: &Subscriber, selection: &Value) -> Result<Value, McuError> {
        let kind = PayloadKind::RequestOffer;
        match self
            .payload(s.conn, kind, &s.id, selection_of(selection))
            .await
        {
            Ok(reply) => sdp_reply(reply, SignalType::Offer),
            Err(e) => Err(failed(e)),
        }
    }

    /// Deletes a subscriber whose offer did not come.
    pub(in crate::mcu) async fn abandon(&self, s: &Arc<Subscriber>) {
        self.clients.lock().by_id.remove(&(s.conn, s.id.clone()));
        self.delete(s.conn, CommandKind::DeleteSubscriber, &s.id)
            .await;
    }

    /// A subscriber's `answer`.
    pub async fn subscriber_answer(
        &self,
        key: &SubKey,
        sid: &str,
        sdp_text: &str,
    ) -> Result<(), McuError> {
        let s = self.clients.subscriber_checked(key, sid)?;
        let answer = sdp::jsep("answer", sdp_text, &self.config());
        self.payload(s.conn, PayloadKind::Answer, &s.id, Some(answer))
            .await
            .map(|_| ())
            .map_err(failed)
    }

    /// A subscriber's candidate (`None`: end of candidates).
    pub async fn subscriber_candidate(
        &self,
        key: &SubKey,
        sid: &str,
        candidate: Option<Value>,
    ) -> Result<(), McuError> {
        let s = self.clients.subscriber_checked(key, sid)?;
        self.send_candidate(s.conn, &s.id, candidate).await
    }

    /// `selectStream`: substream/temporal layer, audio/video on or off.
    pub async fn select_stream(&self, key: &SubKey, payload: &Value) -> Result<(), McuError> {
        let s = self.clients.subscriber_checked(key, "")?;
        let Some(selection) = selection_of(payload) else {
            return Ok(());
        };
        self.payload(s.conn, PayloadKind::SelectStream, &s.id, Some(selection))
            .await
            .map(|_| ())
            .map_err(failed)
    }
}

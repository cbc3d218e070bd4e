//! What a session asks for: commands (create and delete publishers and
//! subscribers, answered at once) and payloads (signaling for one client,
//! run by that client's worker in arrival order through the crate's Janus
//! MCU), and what Janus sends on its own (candidates, offers) back to the
//! session that owns the client.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::server::{Client, ClientInfo, ClientKind, Proxy};
use super::session::Session;
use crate::api::proxy::{
    self as wire, CommandKind, PayloadKind, ProxyCommand, ProxyPayload, ProxyServerMessage,
};
use crate::mcu::{sdp, McuError, Offer, Signal, StreamType};

/// Payloads one client may have queued (the reader waits beyond it).
const CLIENT_QUEUE: usize = 64;

/// A payload for a client's worker.
pub struct Job {
    /// The request id.
    pub id: Option<String>,
    /// The payload.
    pub payload: ProxyPayload,
    /// Who asked (the reply goes there).
    pub session: Arc<Session>,
    /// The connection's slot for a request in flight, freed when done.
    pub permit: OwnedSemaphorePermit,
}

fn error(id: Option<&str>, code: &str, message: &str) -> ProxyServerMessage {
    ProxyServerMessage::error(id, code, message)
}

/// Commands known to the metrics.
const COMMANDS: &[&str] = &[
    "create-publisher",
    "create-subscriber",
    "delete-publisher",
    "delete-subscriber",
];
/// Payload types known to the metrics.
const PAYLOADS: &[&str] = &[
    "offer",
    "answer",
    "candidate",
    "endOfCandidates",
    "requestoffer",
    "sendoffer",
    "selectStream",
];

/// A random UUID (version 4), as the Go proxy names its clients.
pub fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let mut b = b;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A command of `session`; the reply goes to it.
pub fn command(proxy: &Arc<Proxy>, session: &Arc<Session>, id: Option<&str>, cmd: ProxyCommand) {
    count(
        &proxy.metrics.command_messages_total,
        cmd.kind.as_str(),
        COMMANDS,
    );
    let reply = match &cmd.kind {
        CommandKind::CreatePublisher => create_publisher(proxy, session, id, &cmd),
        CommandKind::CreateSubscriber => create_subscriber(proxy, session, id, &cmd),
        CommandKind::DeletePublisher | CommandKind::DeleteSubscriber => {
            match deletable(proxy, session, &cmd) {
                Some(c) => {
                    // The reply goes first: the last client of a scheduled
                    // shutdown ends the proxy.
                    proxy.send_to(session, &ProxyServerMessage::command(id, &cmd.client_id));
                    if let Some(c) = proxy.remove_client(&c.info.id) {
                        tracing::info!(session = %session.id, client = %c.info.id, "{} deleted", cmd.kind.as_str());
                        proxy.close_in_mcu(&c.info);
                    }
                    return;
                }
                None => unknown_client(id),
            }
        }
        CommandKind::Unknown(k) => {
            tracing::info!(session = %session.id, command = ?k, "unsupported command");
            error(id, wire::BAD_REQUEST, "Unsupported command received.")
        }
    };
    proxy.send_to(session, &reply);
}

/// A refusal to send instead of the reply.
type Refused = Box<ProxyServerMessage>;

/// `unknown_client`, with the Go proxy's text.
fn unknown_client(id: Option<&str>) -> ProxyServerMessage {
    error(id, wire::UNKNOWN_CLIENT, "Unknown client id given.")
}

/// Counts a message of `kind` in `counter` (kinds not in `known` as
/// `other`).
fn count(counter: &prometheus::IntCounterVec, kind: &str, known: &[&'static str]) {
    counter
        .with_label_values(&[super::metrics::known_label(kind, known)])
        .inc();
}

fn stream_of(cmd: &ProxyCommand, id: Option<&str>) -> Result<StreamType, Refused> {
    if cmd.stream_type.is_empty() {
        return Err(Box::new(error(
            id,
            wire::INVALID_FORMAT,
            "stream type missing",
        )));
    }
    StreamType::parse(&cmd.stream_type).ok_or_else(|| {
        Box::new(error(
            id,
            wire::BAD_REQUEST,
            "Unsupported stream type (video or screen).",
        ))
    })
}

fn register(proxy: &Arc<Proxy>, info: ClientInfo, id: Option<&str>) -> Result<(), Refused> {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    let client = Arc::new(Client {
        info: info.clone(),
        queue: tx,
        established: Default::default(),
        busy: Default::default(),
    });
    if !proxy.add_client(client) {
        return Err(Box::new(error(
            id,
            wire::INTERNAL_ERROR,
            "Too many publishers and subscribers on this proxy.",
        )));
    }
    tokio::spawn(worker(proxy.clone(), info, rx));
    Ok(())
}

/// A new publisher or subscriber of `session` (Janus must be there): its
/// id, or the error reply.
fn new_client(
    proxy: &Arc<Proxy>,
    session: &Session,
    id: Option<&str>,
    stream: StreamType,
    kind: ClientKind,
) -> Result<Arc<str>, Refused> {
    if !proxy.mcu.connected() {
        return Err(Box::new(error(
            id,
            wire::INTERNAL_ERROR,
            "not connected to Janus",
        )));
    }
    let client_id: Arc<str> = uuid().into();
    let info = ClientInfo {
        id: client_id.clone(),
        session: session.id.clone(),
        stream,
        kind,
    };
    register(proxy, info, id)?;
    Ok(client_id)
}

fn create_publisher(
    proxy: &Arc<Proxy>,
    session: &Arc<Session>,
    id: Option<&str>,
    cmd: &ProxyCommand,
) -> ProxyServerMessage {
    if proxy.shutdown_scheduled() {
        return error(
            id,
            wire::SHUTDOWN_SCHEDULED,
            "The server is scheduled to shutdown.",
        );
    }
    let stream = match stream_of(cmd, id) {
        Ok(s) => s,
        Err(e) => return *e,
    };
    let kind = ClientKind::Publisher {
        bitrate: cmd.bitrate,
        mediatypes: cmd.mediatypes,
    };
    let client_id = match new_client(proxy, session, id, stream, kind) {
        Ok(c) => c,
        Err(e) => return *e,
    };
    tracing::info!(session = %session.id, client = %client_id, stream = stream.as_str(), bitrate = cmd.bitrate, mediatypes = cmd.mediatypes, "publisher created");
    ProxyServerMessage::command(id, &client_id)
}

fn create_subscriber(
    proxy: &Arc<Proxy>,
    session: &Arc<Session>,
    id: Option<&str>,
    cmd: &ProxyCommand,
) -> ProxyServerMessage {
    if cmd.publisher_id.is_empty() {
        return error(id, wire::INVALID_FORMAT, "publisher id missing");
    }
    let stream = match stream_of(cmd, id) {
        Ok(s) => s,
        Err(e) => return *e,
    };
    let publisher = match proxy.client(&cmd.publisher_id) {
        Some(p)
            if matches!(p.info.kind, ClientKind::Publisher { .. }) && p.info.stream == stream =>
        {
            p.info.id.clone()
        }
        _ => return unknown_client(id),
    };
    let kind = ClientKind::Subscriber { publisher };
    let client_id = match new_client(proxy, session, id, stream, kind) {
        Ok(c) => c,
        Err(e) => return *e,
    };
    tracing::info!(session = %session.id, client = %client_id, publisher = %cmd.publisher_id, stream = stream.as_str(), "subscriber created");
    ProxyServerMessage::command(id, &client_id)
}

/// The client a delete command names, when it is of that kind and of
/// this session.
fn deletable(proxy: &Proxy, session: &Session, cmd: &ProxyCommand) -> Option<Arc<Client>> {
    let c = proxy.client(&cmd.client_id)?;
    let publisher = matches!(c.info.kind, ClientKind::Publisher { .. });
    (c.info.session == session.id && publisher == (cmd.kind == CommandKind::DeletePublisher))
        .then_some(c)
}

/// A payload of `session` (the connection holds a `permit` for it).
pub async fn payload(
    proxy: &Arc<Proxy>,
    session: &Arc<Session>,
    id: Option<String>,
    payload: ProxyPayload,
    permit: OwnedSemaphorePermit,
) {
    let Some(c) = proxy.client(&payload.client_id) else {
        proxy.send_to(session, &unknown_client(id.as_deref()));
        return;
    };
    count(
        &proxy.metrics.payload_messages_total,
        payload.kind.as_str(),
        PAYLOADS,
    );
    match &payload.kind {
        PayloadKind::EndOfCandidates => {
            let reply = ProxyPayload::reply(PayloadKind::EndOfCandidates, &payload.client_id, None);
            proxy.send_to(session, &ProxyServerMessage::payload(id.as_deref(), reply));
            return;
        }
        PayloadKind::Unknown(_) => {
            proxy.send_to(
                session,
                &error(
                    id.as_deref(),
                    wire::UNSUPPORTED_PAYLOAD,
                    "Unsupported payload type.",
                ),
            );
            return;
        }
        PayloadKind::Offer | PayloadKind::Answer | PayloadKind::Candidate
            if payload.payload.is_none() =>
        {
            proxy.send_to(
                session,
                &error(id.as_deref(), wire::INVALID_FORMAT, "payload missing"),
            );
            return;
        }
        _ => {}
    }
    let job = Job {
        id,
        payload,
        session: session.clone(),
        permit,
    };
    // Waits while the client's queue is full: the connection is not read
    // meanwhile (the permit bounds what one connection has in flight).
    if let Err(mpsc::error::SendError(job)) = c.queue.send(job).await {
        proxy.send_to(&job.session, &unknown_client(job.id.as_deref()));
    }
}

/// Runs one client's payloads in order until the client is gone.
async fn worker(proxy: Arc<Proxy>, info: ClientInfo, mut rx: mpsc::Receiver<Job>) {
    while let Some(job) = rx.recv().await {
        let Some(client) = proxy.client(&info.id) else {
            proxy.send_to(&job.session, &unknown_client(job.id.as_deref()));
            continue;
        };
        client.busy.store(true, Ordering::Release);
        let reply = run(&proxy, &info, &job).await;
        let reply = match reply {
            Ok((established, answer)) => {
                if established {
                    client.established.store(true, Ordering::Release);
                }
                let p = ProxyPayload::reply(job.payload.kind.clone(), &info.id, answer);
                ProxyServerMessage::payload(job.id.as_deref(), p)
            }
            Err(e) => {
                tracing::info!(client = %info.id, payload = job.payload.kind.as_str(), "payload failed: {e}");
                error(job.id.as_deref(), wire::INTERNAL_ERROR, &e.to_string())
            }
        };
        client.busy.store(false, Ordering::Release);
        // Deleted while Janus worked on it: what Janus made goes too.
        let deleted = proxy.client(&info.id).is_none();
        if deleted {
            proxy.close_in_mcu(&info);
        }
        proxy.send_to(&job.session, &reply);
        if !deleted {
            // Janus may have closed it while it was busy (after the reply,
            // so that the server hears of it in that order).
            proxy.check_closed(&client);
        }
        drop(job.permit);
    }
}

fn raw(v: &Value) -> Option<Box<RawValue>> {
    serde_json::value::to_raw_value(v).ok()
}

fn body(job: &Job) -> Value {
    job.payload
        .payload
        .as_ref()
        .and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or(Value::Null)
}

type Outcome = Result<(bool, Option<Box<RawValue>>), McuError>;

/// One payload through Janus: whether the client is now in Janus, and the
/// reply's payload.
async fn run(proxy: &Proxy, info: &ClientInfo, job: &Job) -> Outcome {
    let body = body(job);
    let mcu = &proxy.mcu;
    let unsupported = || {
        Err(McuError::Failed(format!(
            "Unsupported message type: {}",
            job.payload.kind.as_str()
        )))
    };
    match (&info.kind, &job.payload.kind) {
        (ClientKind::Publisher { bitrate, .. }, PayloadKind::Offer) => {
            let sdp_text = body["sdp"].as_str().unwrap_or("");
            let media = sdp::parse(sdp_text)
                .map_err(|e| McuError::Failed(format!("invalid offer: {e:?}")))?;
            let offer = Offer {
                sid: info.id.to_string(),
                sdp: sdp_text.to_string(),
                bitrate: *bitrate,
                media,
                ..Offer::default()
            };
            let mut answer = None;
            mcu.publish(&info.id, info.stream, offer, |_, jsep| answer = raw(jsep))
                .await?;
            Ok((true, answer))
        }
        (ClientKind::Publisher { .. }, PayloadKind::Candidate) => {
            let c = candidate(proxy, &body)?;
            mcu.publisher_candidate(&info.id, info.stream, "", c)
                .await?;
            Ok((false, None))
        }
        (
            ClientKind::Subscriber { publisher },
            PayloadKind::RequestOffer | PayloadKind::SendOffer,
        ) => {
            let mut offer = None;
            mcu.subscribe(
                &info.id,
                publisher,
                info.stream,
                &job.payload.sid,
                &body,
                |_, jsep| offer = raw(jsep),
            )
            .await?;
            Ok((true, offer))
        }
        (ClientKind::Subscriber { publisher }, PayloadKind::Answer) => {
            let sdp_text = body["sdp"].as_str().unwrap_or("");
            mcu.subscriber_answer(&info.id, publisher, info.stream, "", sdp_text)
                .await?;
            Ok((false, None))
        }
        (ClientKind::Subscriber { publisher }, PayloadKind::Candidate) => {
            let c = candidate(proxy, &body)?;
            mcu.subscriber_candidate(&info.id, publisher, info.stream, "", c)
                .await?;
            Ok((false, None))
        }
        (ClientKind::Subscriber { publisher }, PayloadKind::SelectStream) => {
            mcu.select_stream(&info.id, publisher, info.stream, &body)
                .await?;
            Ok((false, None))
        }
        _ => unsupported(),
    }
}

/// The candidate of a `candidate` payload; None when `[mcu]
/// allowedcandidates`/`blockedcandidates` filter it (not passed on).
fn candidate(proxy: &Proxy, body: &Value) -> Result<Option<Value>, McuError> {
    let c = body
        .get("candidate")
        .filter(|c| c.is_object())
        .ok_or_else(|| McuError::Failed("candidate missing".into()))?;
    let Some(text) = c["candidate"].as_str().filter(|t| !t.is_empty()) else {
        // The end-of-candidates marker: nothing for Janus.
        return Ok(None);
    };
    let parsed = sdp::parse_candidate(text)
        .map_err(|e| McuError::Failed(format!("Error parsing candidate: {e}")))?;
    let cfg = proxy.mcu.config();
    if sdp::is_filtered(&parsed, &cfg.allowed_candidates, &cfg.blocked_candidates) {
        return Ok(None);
    }
    Ok(Some(c.clone()))
}

/// What Janus trickles or offers on its own goes to the session owning
/// the client it is for.
pub async fn forward_signals(proxy: Arc<Proxy>, mut rx: mpsc::UnboundedReceiver<Signal>) {
    while let Some(s) = rx.recv().await {
        let Some(c) = proxy.client(&s.to) else {
            continue;
        };
        let Some(session) = proxy.session(&c.info.session) else {
            continue;
        };
        let (kind, payload) = match s.kind {
            "candidate" => (PayloadKind::Candidate, s.payload),
            "offer" => (PayloadKind::Offer, serde_json::json!({"offer": s.payload})),
            _ => continue,
        };
        let p = ProxyPayload::reply(kind, &c.info.id, raw(&payload));
        proxy.send_to(&session, &ProxyServerMessage::payload(None, p));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uuids_are_version_4() {
        let u = super::uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
        assert_ne!(u, super::uuid());
    }
}

//! Unit tests of the Janus client.

use super::*;

#[test]
fn keepalive_is_half_the_session_timeout_and_never_zero_or_overflowing() {
    assert_eq!(
        keepalive_for(&json!({"session-timeout": 10})),
        Duration::from_secs(5)
    );
    assert_eq!(keepalive_for(&json!({"session-timeout": 0})), KEEPALIVE);
    assert_eq!(keepalive_for(&json!({"session-timeout": -1})), KEEPALIVE);
    assert_eq!(
        keepalive_for(&json!({"session-timeout": 1u64 << 62})),
        KEEPALIVE
    );
    assert_eq!(
        keepalive_for(&json!({"session-timeout": u64::MAX})),
        KEEPALIVE
    );
    assert_eq!(keepalive_for(&json!({})), KEEPALIVE);
}

#[test]
fn plugin_errors_inside_events_and_success_are_errors() {
    let ev = json!({"janus": "event", "plugindata": {"plugin": VIDEOROOM,
        "data": {"videoroom": "event", "error_code": 428, "error": "No such feed (1)"}}});
    match classify(ev) {
        Err(JanusError::Plugin { code: 428, reason }) => assert!(reason.contains("feed")),
        other => panic!("unexpected {other:?}"),
    }
    let ok = json!({"janus": "success", "plugindata": {"plugin": VIDEOROOM,
        "data": {"videoroom": "created", "room": 5}}});
    assert_eq!(plugin_data(&classify(ok).unwrap())["room"], 5);
    let err = json!({"janus": "error", "error": {"code": 458, "reason": "No such session 1"}});
    assert!(matches!(
        classify(err),
        Err(JanusError::Janus { code: 458, .. })
    ));
}

#[tokio::test]
async fn an_event_before_its_ack_answers_the_request_and_the_ack_is_dropped() {
    let gw = Gateway::new(
        Duration::from_secs(1),
        prometheus::IntCounterVec::new(prometheus::Opts::new("x", "x"), &["type"]).unwrap(),
    );
    let (out, mut sent) = mpsc::unbounded_channel();
    *lock(&gw.shared.conn) = Some(Conn {
        session: 7,
        info: Arc::new(JanusInfo::new(json!({}), std::time::UNIX_EPOCH)),
        out,
        broken: CancellationToken::new(),
    });
    let (events, mut evrx) = mpsc::unbounded_channel();
    let req = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.message(9, json!({"request": "join"}), None, true).await })
    };
    let m: Value = serde_json::from_str(&sent.recv().await.unwrap()).unwrap();
    assert_eq!(m["session_id"], 7);
    assert_eq!(m["handle_id"], 9);
    let t = m["transaction"].clone();
    gw.dispatch(
        json!({"janus": "event", "transaction": t, "sender": 9,
            "plugindata": {"plugin": VIDEOROOM, "data": {"videoroom": "joined", "room": 3}}}),
        &events,
    );
    gw.dispatch(json!({"janus": "ack", "transaction": t}), &events);
    let r = req.await.unwrap().unwrap();
    assert_eq!(plugin_data(&r)["videoroom"], "joined");
    // A handle event without transaction goes to the owner.
    gw.dispatch(
        json!({"janus": "webrtcup", "session_id": 7, "sender": 9}),
        &events,
    );
    match evrx.try_recv() {
        Ok(GatewayEvent::Handle { handle: 9, msg }) => assert_eq!(msg["janus"], "webrtcup"),
        other => panic!("unexpected {other:?}"),
    }
    assert!(evrx.try_recv().is_err(), "the stray ack is not an event");
}

#[tokio::test]
async fn an_ack_before_the_event_keeps_the_request_waiting() {
    let gw = Gateway::new(
        Duration::from_secs(1),
        prometheus::IntCounterVec::new(prometheus::Opts::new("x", "x"), &["type"]).unwrap(),
    );
    let (out, mut sent) = mpsc::unbounded_channel();
    *lock(&gw.shared.conn) = Some(Conn {
        session: 7,
        info: Arc::new(JanusInfo::new(json!({}), std::time::UNIX_EPOCH)),
        out,
        broken: CancellationToken::new(),
    });
    let (events, _evrx) = mpsc::unbounded_channel();
    let req = {
        let gw = gw.clone();
        tokio::spawn(async move {
            gw.message(9, json!({"request": "configure"}), None, true)
                .await
        })
    };
    let m: Value = serde_json::from_str(&sent.recv().await.unwrap()).unwrap();
    let t = m["transaction"].clone();
    gw.dispatch(json!({"janus": "ack", "transaction": t}), &events);
    assert!(!req.is_finished());
    gw.dispatch(
        json!({"janus": "event", "transaction": t, "sender": 9,
            "plugindata": {"plugin": VIDEOROOM, "data": {"videoroom": "event", "error_code": 424, "error": "Invalid"}}}),
        &events,
    );
    assert!(matches!(
        req.await.unwrap(),
        Err(JanusError::Plugin { code: 424, .. })
    ));
}

/// A fake Janus: each connection answers `info`, then `answer` gets the
/// next request (claim or create) and says what to do.
async fn fake_janus(
    answer: impl Fn(usize, &Value) -> Option<Value> + Send + Sync + 'static,
) -> String {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((tcp, _)) = listener.accept().await {
            n += 1;
            let answer = answer.clone();
            tokio::spawn(async move {
                // The handshake's callback type is tungstenite's.
                #[allow(clippy::result_large_err)]
                let protocol = |_: &Request, mut r: Response| {
                    r.headers_mut().insert(
                        "Sec-WebSocket-Protocol",
                        HeaderValue::from_static("janus-protocol"),
                    );
                    Ok(r)
                };
                let mut ws = tokio_tungstenite::accept_hdr_async(tcp, protocol)
                    .await
                    .unwrap();
                while let Some(Ok(Message::Text(t))) = ws.next().await {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    let reply = match v["janus"].as_str() {
                        Some("info") => Some(json!({"janus": "server_info", "transaction": "info",
                            "plugins": {VIDEOROOM: {}}, "data_channels": true, "full-trickle": true})),
                        _ => answer(n, &v),
                    };
                    let Some(mut reply) = reply else { return };
                    reply["transaction"] = v["transaction"].clone();
                    if ws
                        .send(Message::Text(reply.to_string().into()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn a_connection_lost_during_the_claim_claims_again_on_the_next_one() {
    // The first connection drops at the claim, the second takes it.
    let url = fake_janus(|n, v| match (n, v["janus"].as_str()) {
        (1, _) => None,
        (_, Some("claim")) => Some(json!({"janus": "success", "session_id": v["session_id"]})),
        (_, Some("create")) => Some(json!({"janus": "success", "data": {"id": 99}})),
        _ => Some(json!({"janus": "ack"})),
    })
    .await;
    let gw = Gateway::new(
        Duration::from_secs(2),
        prometheus::IntCounterVec::new(prometheus::Opts::new("x", "x"), &["type"]).unwrap(),
    );
    gw.claim_at_connect(7);
    let (events, mut evrx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    tokio::spawn(gw.clone().run(url, events, cancel.clone()));
    let ev = tokio::time::timeout(Duration::from_secs(10), evrx.recv())
        .await
        .expect("connected in time");
    assert!(
        matches!(
            ev,
            Some(GatewayEvent::Connected {
                claimed: Some(true)
            })
        ),
        "{ev:?}"
    );
    assert_eq!(gw.session_id(), 7);
    cancel.cancel();
}

/// Answers the next request sent with `reply` (its transaction added);
/// returns the request.
async fn answer_next(
    gw: &Gateway,
    sent: &mut mpsc::UnboundedReceiver<String>,
    mut reply: Value,
) -> Value {
    let m: Value = serde_json::from_str(&sent.recv().await.unwrap()).unwrap();
    reply["transaction"] = m["transaction"].clone();
    let (events, _evrx) = mpsc::unbounded_channel();
    gw.dispatch(reply, &events);
    m
}

#[tokio::test]
async fn requests_on_handles_of_a_claimed_session_carry_it_and_its_last_detach_destroys_it() {
    let gw = Gateway::new(
        Duration::from_secs(1),
        prometheus::IntCounterVec::new(prometheus::Opts::new("x", "x"), &["type"]).unwrap(),
    );
    let (out, mut sent) = mpsc::unbounded_channel();
    let broken = CancellationToken::new();
    *lock(&gw.shared.conn) = Some(Conn {
        session: 7,
        info: Arc::new(JanusInfo::new(json!({}), std::time::UNIX_EPOCH)),
        out,
        broken: broken.clone(),
    });
    gw.shared.last_session.store(7, Ordering::Relaxed);
    gw.adopt_handles(5, &[9, 10]);
    let ok = json!({"janus": "success"});
    // The claim names the other session.
    let claim = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.claim_extra(5).await })
    };
    let m = answer_next(&gw, &mut sent, ok.clone()).await;
    assert_eq!(
        (m["janus"].as_str(), m["session_id"].as_u64()),
        (Some("claim"), Some(5))
    );
    claim.await.unwrap().unwrap();
    // Requests on its handles carry it; on others, the connection's own.
    for (handle, session) in [(9, 5), (11, 7)] {
        let gw2 = gw.clone();
        let req =
            tokio::spawn(async move { gw2.trickle(handle, json!({"completed": true})).await });
        let m = answer_next(&gw, &mut sent, ok.clone()).await;
        assert_eq!(m["session_id"], session, "{m}");
        req.await.unwrap().unwrap();
    }
    assert_eq!(gw.session_of(10), 5);
    assert_eq!(gw.session_of(11), 7);
    // Janus no longer knowing the claimed session does not break the
    // connection's own.
    let gw2 = gw.clone();
    let req = tokio::spawn(async move { gw2.trickle(10, json!({"completed": true})).await });
    let gone = json!({"janus": "error", "error": {"code": 458, "reason": "No such session 5"}});
    answer_next(&gw, &mut sent, gone).await;
    assert!(matches!(
        req.await.unwrap(),
        Err(JanusError::Janus { code: 458, .. })
    ));
    assert!(!broken.is_cancelled());
    // Detaching its handles: the last one destroys it.
    let gw2 = gw.clone();
    let req = tokio::spawn(async move { gw2.detach(9).await });
    let m = answer_next(&gw, &mut sent, ok.clone()).await;
    assert_eq!(
        (m["janus"].as_str(), m["session_id"].as_u64()),
        (Some("detach"), Some(5))
    );
    req.await.unwrap().unwrap();
    assert!(sent.try_recv().is_err(), "a handle of it is left");
    let gw2 = gw.clone();
    let req = tokio::spawn(async move { gw2.detach(10).await });
    answer_next(&gw, &mut sent, ok.clone()).await;
    let m = answer_next(&gw, &mut sent, ok.clone()).await;
    assert_eq!(
        (m["janus"].as_str(), m["session_id"].as_u64()),
        (Some("destroy"), Some(5))
    );
    req.await.unwrap().unwrap();
    assert_eq!(gw.session_of(10), 7);
}

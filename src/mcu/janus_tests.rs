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

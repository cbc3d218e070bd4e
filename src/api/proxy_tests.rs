//! The exact JSON of mcu-proxy-notes.md §2, both ways.

use super::*;

fn raw(s: &str) -> Option<Box<RawValue>> {
    Some(RawValue::from_string(s.to_string()).unwrap())
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap()
}

#[test]
fn hello_request_new_and_resume() {
    let m = ProxyClientMessage::hello(
        "1",
        ProxyHelloRequest {
            version: PROXY_VERSION.into(),
            token: "JWT".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        json(&m),
        r#"{"id":"1","type":"hello","hello":{"version":"1.0","resumeid":"","token":"JWT"}}"#
    );
    let m = ProxyClientMessage::hello(
        "5",
        ProxyHelloRequest {
            version: PROXY_VERSION.into(),
            resumeid: "old".into(),
            ..Default::default()
        },
    );
    assert_eq!(
        json(&m),
        r#"{"id":"5","type":"hello","hello":{"version":"1.0","resumeid":"old","token":""}}"#
    );
    let back: ProxyClientMessage = serde_json::from_str(&json(&m)).unwrap();
    assert_eq!(back.kind, ProxyClientKind::Hello);
    assert_eq!(back.hello.unwrap().resumeid, "old");
}

#[test]
fn hello_reply_with_and_without_country() {
    let go = r#"{"id":"1","type":"hello","hello":{"version":"1.0","sessionid":"abc","server":{"version":"unreleased"}}}"#;
    let m: ProxyServerMessage = serde_json::from_str(go).unwrap();
    assert_eq!(m.kind, ProxyServerKind::Hello);
    assert_eq!(m.id.as_deref(), Some("1"));
    let h = m.hello.clone().unwrap();
    assert_eq!(h.sessionid, "abc");
    assert_eq!(h.server.as_ref().unwrap().country, "");
    assert_eq!(json(&m), go);
    let m = ProxyServerMessage::hello(
        Some("1"),
        ProxyHelloReply {
            version: PROXY_VERSION.into(),
            sessionid: "s".into(),
            server: Some(ProxyServerInfo {
                version: "v".into(),
                features: vec![],
                country: "DE".into(),
            }),
        },
    );
    assert_eq!(
        json(&m),
        r#"{"id":"1","type":"hello","hello":{"version":"1.0","sessionid":"s","server":{"version":"v","country":"DE"}}}"#
    );
}

#[test]
fn hello_errors() {
    let go = r#"{"id":"1","type":"error","error":{"code":"auth_failed","message":"The token could not be authenticated."}}"#;
    let m: ProxyServerMessage = serde_json::from_str(go).unwrap();
    assert_eq!(m.kind, ProxyServerKind::Error);
    assert_eq!(m.error.as_ref().unwrap().code, AUTH_FAILED);
    assert_eq!(json(&m), go);
    assert_eq!(
        json(&ProxyServerMessage::error(
            Some("1"),
            AUTH_FAILED,
            "The token could not be authenticated."
        )),
        go
    );
}

#[test]
fn commands_and_replies() {
    let mut c = ProxyCommand::new(CommandKind::CreatePublisher);
    c.stream_type = "screen".into();
    c.bitrate = 2097152;
    c.mediatypes = MEDIA_SCREEN;
    assert_eq!(
        json(&ProxyClientMessage::command("2", c)),
        r#"{"id":"2","type":"command","command":{"type":"create-publisher","streamType":"screen","bitrate":2097152,"mediatypes":4}}"#
    );
    let mut c = ProxyCommand::new(CommandKind::CreatePublisher);
    c.stream_type = "video".into();
    assert_eq!(
        json(&ProxyClientMessage::command("3", c)),
        r#"{"id":"3","type":"command","command":{"type":"create-publisher","streamType":"video"}}"#,
        "bitrate and mediatypes omitted when 0"
    );
    let mut c = ProxyCommand::new(CommandKind::CreateSubscriber);
    c.stream_type = "screen".into();
    c.publisher_id = "pub-uuid".into();
    assert_eq!(
        json(&ProxyClientMessage::command("4", c)),
        r#"{"id":"4","type":"command","command":{"type":"create-subscriber","streamType":"screen","publisherId":"pub-uuid"}}"#
    );
    for (kind, name) in [
        (CommandKind::DeleteSubscriber, "delete-subscriber"),
        (CommandKind::DeletePublisher, "delete-publisher"),
    ] {
        let mut c = ProxyCommand::new(kind.clone());
        c.client_id = "u".into();
        let s = json(&ProxyClientMessage::command("7", c));
        assert_eq!(
            s,
            format!(
                r#"{{"id":"7","type":"command","command":{{"type":"{name}","clientId":"u"}}}}"#
            )
        );
        let back: ProxyClientMessage = serde_json::from_str(&s).unwrap();
        assert_eq!(back.command.unwrap().kind, kind);
    }
    let go = r#"{"id":"2","type":"command","command":{"id":"uuid"}}"#;
    let m: ProxyServerMessage = serde_json::from_str(go).unwrap();
    assert_eq!(m.command.as_ref().unwrap().id, "uuid");
    assert_eq!(json(&m), go);
    assert_eq!(json(&ProxyServerMessage::command(Some("2"), "uuid")), go);
}

#[test]
fn newer_go_fields_are_read_and_optional() {
    let m: ProxyClientMessage = serde_json::from_str(
        r#"{"id":"9","type":"command","command":{"type":"create-publisher","sid":"s1","streamType":"video","publisherSettings":{"x":1}}}"#,
    )
    .unwrap();
    let c = m.command.unwrap();
    assert_eq!(c.sid, "s1");
    assert_eq!(c.stream_type, "video");
    let m: ProxyServerMessage =
        serde_json::from_str(r#"{"type":"event","event":{"type":"future-event","bandwidth":{}}}"#)
            .unwrap();
    assert_eq!(
        m.event.unwrap().kind,
        EventKind::Unknown("future-event".into())
    );
}

#[test]
fn payload_requests() {
    let p = ProxyPayload::request(
        PayloadKind::Offer,
        "pub",
        raw(r#"{"type":"offer","sdp":"v=0","nick":"Nick"}"#),
    );
    assert_eq!(
        json(&ProxyClientMessage::payload("3", p)),
        r#"{"id":"3","type":"payload","payload":{"type":"offer","clientId":"pub","payload":{"type":"offer","sdp":"v=0","nick":"Nick"}}}"#
    );
    let p = ProxyPayload::request(PayloadKind::RequestOffer, "sub", None);
    let s = json(&ProxyClientMessage::payload("5", p));
    assert_eq!(
        s,
        r#"{"id":"5","type":"payload","payload":{"type":"requestoffer","clientId":"sub"}}"#
    );
    let back: ProxyClientMessage = serde_json::from_str(&s).unwrap();
    let p = back.payload.unwrap();
    assert_eq!(p.kind, PayloadKind::RequestOffer);
    assert!(p.payload.is_none());
    for (kind, name) in [
        (PayloadKind::Answer, "answer"),
        (PayloadKind::Candidate, "candidate"),
        (PayloadKind::EndOfCandidates, "endOfCandidates"),
        (PayloadKind::SendOffer, "sendoffer"),
        (PayloadKind::SelectStream, "selectStream"),
    ] {
        assert_eq!(kind.as_str(), name);
        assert_eq!(PayloadKind::parse(name), kind);
    }
}

#[test]
fn payload_replies_keep_null() {
    let go = r#"{"id":"3","type":"payload","payload":{"type":"offer","clientId":"pub","payload":{"type":"answer","sdp":"v=0"}}}"#;
    let m: ProxyServerMessage = serde_json::from_str(go).unwrap();
    let p = m.payload.clone().unwrap();
    assert_eq!(p.kind, PayloadKind::Offer);
    assert_eq!(
        p.payload.as_ref().unwrap().get(),
        r#"{"type":"answer","sdp":"v=0"}"#
    );
    assert_eq!(json(&m), go);

    let go = r#"{"id":"6","type":"payload","payload":{"type":"answer","clientId":"sub","payload":null}}"#;
    let m: ProxyServerMessage = serde_json::from_str(go).unwrap();
    assert!(m.payload.as_ref().unwrap().payload.is_none());
    let built = ProxyServerMessage::payload(
        Some("6"),
        ProxyPayload::reply(PayloadKind::Answer, "sub", None),
    );
    assert_eq!(json(&built), go);

    let cand = r#"{"type":"payload","payload":{"type":"candidate","clientId":"c","payload":{"candidate":{"candidate":"candidate:1 1 udp 1 1.2.3.4 5 typ host","sdpMid":"0","sdpMLineIndex":0}}}}"#;
    let m: ProxyServerMessage = serde_json::from_str(cand).unwrap();
    assert!(m.id.is_none());
    assert_eq!(m.payload.as_ref().unwrap().kind, PayloadKind::Candidate);
    assert_eq!(json(&m), cand);
}

#[test]
fn events() {
    let cases = [
        (
            r#"{"type":"event","event":{"type":"update-load"}}"#,
            EventKind::UpdateLoad,
            "",
            0,
        ),
        (
            r#"{"type":"event","event":{"type":"update-load","load":3}}"#,
            EventKind::UpdateLoad,
            "",
            3,
        ),
        (
            r#"{"type":"event","event":{"type":"shutdown-scheduled"}}"#,
            EventKind::ShutdownScheduled,
            "",
            0,
        ),
        (
            r#"{"type":"event","event":{"type":"backend-connected"}}"#,
            EventKind::BackendConnected,
            "",
            0,
        ),
        (
            r#"{"type":"event","event":{"type":"backend-disconnected"}}"#,
            EventKind::BackendDisconnected,
            "",
            0,
        ),
        (
            r#"{"type":"event","event":{"type":"publisher-closed","clientId":"p"}}"#,
            EventKind::PublisherClosed,
            "p",
            0,
        ),
        (
            r#"{"type":"event","event":{"type":"subscriber-closed","clientId":"s"}}"#,
            EventKind::SubscriberClosed,
            "s",
            0,
        ),
        (
            r#"{"type":"event","event":{"type":"ice-completed","clientId":"c"}}"#,
            EventKind::IceCompleted,
            "c",
            0,
        ),
    ];
    for (go, kind, client, load) in cases {
        let m: ProxyServerMessage = serde_json::from_str(go).unwrap();
        assert_eq!(m.kind, ProxyServerKind::Event);
        let e = m.event.clone().unwrap();
        assert_eq!(
            (e.kind.clone(), e.client_id.as_str(), e.load),
            (kind.clone(), client, load)
        );
        assert_eq!(json(&m), go);
        let mut built = ProxyEvent::new(kind);
        built.client_id = client.into();
        built.load = load;
        assert_eq!(json(&ProxyServerMessage::event(built)), go);
    }
}

#[test]
fn bye_both_ways() {
    let go = r#"{"type":"bye","bye":{"reason":"session_resumed"}}"#;
    let m: ProxyServerMessage = serde_json::from_str(go).unwrap();
    assert_eq!(m.bye.as_ref().unwrap().reason, BYE_SESSION_RESUMED);
    assert_eq!(json(&ProxyServerMessage::bye(BYE_SESSION_RESUMED)), go);
    let c = ProxyClientMessage {
        bye: Some(ProxyByeRequest {}),
        ..ProxyClientMessage::bare("9", ProxyClientKind::Bye)
    };
    assert_eq!(json(&c), r#"{"id":"9","type":"bye","bye":{}}"#);
    let m: ProxyClientMessage = serde_json::from_str(r#"{"type":"bye"}"#).unwrap();
    assert_eq!(m.kind, ProxyClientKind::Bye);
    assert!(m.id.is_none());
}

#[test]
fn unknown_types_are_kept() {
    let m: ProxyServerMessage = serde_json::from_str(r#"{"type":"welcome"}"#).unwrap();
    assert_eq!(m.kind, ProxyServerKind::Unknown("welcome".into()));
    let m: ProxyClientMessage = serde_json::from_str(
        r#"{"id":"1","type":"payload","payload":{"type":"mute","clientId":"x"}}"#,
    )
    .unwrap();
    assert_eq!(m.payload.unwrap().kind, PayloadKind::Unknown("mute".into()));
}

//! Cluster rules on an in-memory bus mesh ([`crate::bus::mesh`]): two or
//! three hubs in one test, each a "process" of its own, on paused tokio
//! time. What `tests/cluster.rs` checks over a real NATS server, here in
//! milliseconds and without one.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::bus::mesh::Mesh;
use crate::hub::hello::Identity;
use crate::hub::outbox::Outbox;
use crate::hub::room::RoomKey;
use crate::hub::session::SessionKind;
use crate::hub::tests::{hub_on, internal_hello};
use crate::hub::Hub;

/// `n` hubs on one mesh, each knowing the others (as after start-up).
pub(super) async fn mesh_of(n: usize) -> Vec<Arc<Hub>> {
    mesh_with_stops(n).await.0
}

/// [`mesh_of`], with a token per hub that stops its tasks (the process
/// dies without a goodbye).
async fn mesh_with_stops(n: usize) -> (Vec<Arc<Hub>>, Vec<CancellationToken>) {
    let mesh = Mesh::new();
    let mut hubs = Vec::new();
    let mut stops = Vec::new();
    for _ in 0..n {
        let (bus, inbound) = mesh.join();
        let hub = hub_on(bus);
        let cancel = CancellationToken::new();
        stops.push(cancel.clone());
        hub.spawn_cluster(inbound, cancel.clone());
        // The timers (transient TTLs, resume windows), not the pings to
        // Nextcloud.
        tokio::spawn(hub.clone().timer_loop(cancel.clone()));
        hub.discover_peers().await;
        hubs.push(hub);
    }
    quiet().await;
    for h in &hubs {
        assert_eq!(h.known_processes(), n - 1, "every hub knows the others");
    }
    (hubs, stops)
}

/// Returns once every hub applied everything that was published: with
/// tokio's clock paused, a sleep ends only after every task went idle
/// (nothing here waits for real I/O), so no bus message is still on its way.
pub(super) async fn quiet() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

/// A session and its connection's outbox.
pub(super) struct Conn {
    pub sid: Arc<str>,
    pub conn: Arc<Outbox>,
}

impl Conn {
    /// The frames that reached the connection since the last call.
    pub fn frames(&self) -> Vec<Value> {
        self.conn
            .drain()
            .frames
            .iter()
            .map(|f| serde_json::from_slice(f.as_bytes()).expect("frames are JSON"))
            .collect()
    }

    /// The frames of type `kind` since the last call (others are dropped).
    fn of_type(&self, kind: &str) -> Vec<Value> {
        self.frames()
            .into_iter()
            .filter(|f| f["type"] == kind)
            .collect()
    }

    /// The `data` of the `message` frames since the last call; fails on
    /// any `error` frame.
    pub fn messages(&self) -> Vec<Value> {
        let frames = self.frames();
        assert!(
            frames.iter().all(|f| f["type"] != "error"),
            "no error expected: {frames:?}"
        );
        frames
            .into_iter()
            .filter(|f| f["type"] == "message")
            .map(|f| f["message"]["data"].clone())
            .collect()
    }
}

pub(super) async fn internal(hub: &Arc<Hub>) -> Conn {
    let conn = hub.new_outbox();
    let ok = hub.hello(&conn, None, internal_hello(None)).await.unwrap();
    Conn { sid: ok.sid, conn }
}

async fn internal_in_room(hub: &Arc<Hub>, room: &str) -> Conn {
    let c = internal(hub).await;
    let join = serde_json::from_value(json!({ "roomid": room })).unwrap();
    hub.room_request(&c.sid, None, join).await;
    c
}

/// A client session of `user` that joined `room`, as if Nextcloud had
/// accepted its hello and its join.
pub(super) async fn client_in_room(hub: &Arc<Hub>, user: &str, room: &str) -> Conn {
    let backend = hub.registry().by_id("nc1").unwrap();
    let base = backend.urls[0].clone();
    let ident = Identity {
        kind: SessionKind::Client,
        backend: backend.clone(),
        backend_url: crate::backend::registry::signaling_url(&base, ""),
        backend_base: base,
        user_id: Some(user.to_string()),
        user: None,
        federated: None,
    };
    let conn = hub.new_outbox();
    let ok = hub
        .register(&conn, None, "1.0", Vec::new(), ident)
        .await
        .unwrap();
    let key = RoomKey {
        backend: backend.id.clone(),
        room: room.into(),
    };
    hub.prepare_room(&key).await;
    let nc = Arc::from(format!("nc-{user}"));
    hub.lock()
        .join_room(&ok.sid, None, key, None, None, Some(nc), false);
    Conn { sid: ok.sid, conn }
}

/// `from` sends a `message` with `data` to `recipient`.
pub(super) async fn send(hub: &Arc<Hub>, from: &Conn, recipient: Value, data: Value) {
    let msg = json!({"type": "message", "message": {"recipient": recipient, "data": data}});
    send_raw(hub, from, msg).await;
}

/// `from` sends a client message of any type.
async fn send_raw(hub: &Arc<Hub>, from: &Conn, msg: Value) {
    let text = msg.to_string();
    let parsed = serde_json::from_str(&text).unwrap();
    if let Some(wait) = hub.handle(&from.sid, parsed, &text) {
        wait.await;
    }
}

fn pid(hub: &Hub) -> String {
    hub.lock().bus.pid().to_string()
}

#[tokio::test(start_paused = true)]
async fn a_session_message_to_another_hub_is_delivered_once_and_never_answered() {
    let hubs = mesh_of(3).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let x = internal(a).await;
    let y = internal(b).await;
    let z = internal(&hubs[2]).await;
    quiet().await;
    for c in [&x, &y, &z] {
        c.frames();
    }
    send(
        a,
        &x,
        json!({"type": "session", "sessionid": &*y.sid}),
        json!({"n": 1}),
    )
    .await;
    quiet().await;
    assert_eq!(y.messages(), [json!({"n": 1})], "delivered once");
    assert!(x.messages().is_empty(), "nobody says no_such_session");
    assert!(z.frames().is_empty());

    // A session that hub b does not have (any more): nobody answers (as
    // in the Go server).
    let gone = format!("{}{}", pid(b), "-vanished-session");
    send(
        a,
        &x,
        json!({"type": "session", "sessionid": gone}),
        json!({"n": 2}),
    )
    .await;
    quiet().await;
    let errors = x.frames();
    assert!(errors.is_empty(), "no answer: {errors:?}");
    assert!(y.frames().is_empty() && z.frames().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_room_message_reaches_the_members_on_every_hub_once() {
    let hubs = mesh_of(3).await;
    let x = internal_in_room(&hubs[0], "r1").await;
    let y = internal_in_room(&hubs[1], "r1").await;
    let z = internal_in_room(&hubs[2], "r1").await;
    quiet().await;
    let key = RoomKey {
        backend: "nc1".into(),
        room: "r1".into(),
    };
    for h in &hubs {
        let st = h.lock();
        let members = st.rooms.get(&key).unwrap().members.len();
        assert_eq!(members, 3, "every hub holds the full member list");
        let counted = st.rooms.per_backend().get("nc1").copied();
        assert_eq!(counted, Some(1), "counted once (`signaling_hub_rooms`)");
    }
    let joined: Vec<Value> = x
        .frames()
        .into_iter()
        .filter(|f| f["event"]["type"] == "join")
        .flat_map(|f| f["event"]["join"].as_array().cloned().unwrap_or_default())
        .map(|e| e["sessionid"].clone())
        .collect();
    for other in [&y, &z] {
        assert!(joined.contains(&json!(&*other.sid)), "{joined:?}");
    }
    y.frames();
    z.frames();
    send(&hubs[0], &x, json!({"type": "room"}), json!({"n": 1})).await;
    quiet().await;
    assert_eq!(y.messages(), [json!({"n": 1})]);
    assert_eq!(z.messages(), [json!({"n": 1})]);
    assert!(x.messages().is_empty(), "not back to the sender");
}

#[tokio::test(start_paused = true)]
async fn a_session_resumes_on_another_hub_with_its_queue_and_stays_reachable() {
    let hubs = mesh_of(3).await;
    let (a, b, c) = (&hubs[0], &hubs[1], &hubs[2]);
    let w = internal_in_room(c, "r1").await;
    let alice = client_in_room(a, "alice", "r1").await;
    quiet().await;
    let resume_id = a.lock().sessions.map[&alice.sid].resume_id.clone().unwrap();
    // Everything so far was written to the client before it went away.
    alice.frames();
    a.connection_closed(&alice.sid, alice.conn.conn_id);
    w.frames();
    // Queued on hub a while alice is away.
    send(c, &w, json!({"type": "room"}), json!({"n": 1})).await;
    quiet().await;

    let again = b.new_outbox();
    let ok = b
        .hello(&again, None, internal_hello(Some(&resume_id)))
        .await
        .unwrap();
    assert!(ok.resumed);
    assert_eq!(ok.sid, alice.sid);
    let alice = Conn {
        sid: ok.sid,
        conn: again,
    };
    let frames = alice.frames();
    assert_eq!(frames[0]["type"], "hello", "{frames:?}");
    assert_eq!(frames[1]["message"]["data"], json!({"n": 1}), "{frames:?}");
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(a.session_count(), 0, "handed over, not copied");
    assert_eq!(b.session_count(), 1);
    quiet().await;
    let owner = c.lock().cluster.remote[&alice.sid].info.owner.clone();
    assert_eq!(owner, pid(b), "the others learn the new owner");

    send(
        c,
        &w,
        json!({"type": "session", "sessionid": &*alice.sid}),
        json!({"n": 2}),
    )
    .await;
    send(c, &w, json!({"type": "room"}), json!({"n": 3})).await;
    quiet().await;
    assert_eq!(alice.messages(), [json!({"n": 2}), json!({"n": 3})]);
    assert!(w.messages().is_empty(), "nobody says no_such_session");
}

#[tokio::test(start_paused = true)]
async fn a_federated_session_resumed_elsewhere_keeps_its_marker_and_actor() {
    let hubs = mesh_of(2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let alice = client_in_room(a, "alice", "r1").await;
    let actor = ("federated_users".to_string(), "alice@a.example".to_string());
    a.lock().sessions.map.get_mut(&alice.sid).unwrap().federated =
        Some(Box::new(crate::hub::session::Federated {
            actor: Some(actor.clone()),
        }));
    quiet().await;
    let resume_id = a.lock().sessions.map[&alice.sid].resume_id.clone().unwrap();
    a.connection_closed(&alice.sid, alice.conn.conn_id);
    let again = b.new_outbox();
    let ok = b
        .hello(&again, None, internal_hello(Some(&resume_id)))
        .await
        .unwrap();
    assert!(ok.resumed);
    let st = b.lock();
    let f = st.sessions.map[&alice.sid].federated.as_ref();
    assert_eq!(f.and_then(|f| f.actor.clone()), Some(actor));
}

#[tokio::test(start_paused = true)]
async fn a_backend_request_is_applied_once_by_every_hub() {
    let hubs = mesh_of(2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let x = internal_in_room(a, "r1").await;
    let y = internal_in_room(b, "r1").await;
    quiet().await;
    x.frames();
    y.frames();
    let raw = br#"{"type":"message","message":{"data":{"n":1}}}"#;
    let req = serde_json::from_slice(raw).unwrap();
    let backend = a.registry().by_id("nc1").unwrap();
    let url = backend.urls[0].clone();
    let r = a.backend_api(&backend, &url, "r1", req, raw).await;
    assert!(matches!(r, Ok(crate::hub::backend_api::BackendApiOk::Done)));
    quiet().await;
    for c in [&x, &y] {
        let events = c.of_type("event");
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["event"]["message"]["data"], json!({"n": 1}));
    }
}

/// The bodies of the `transient` frames since the last call.
fn transients(c: &Conn) -> Vec<Value> {
    c.of_type("transient")
        .into_iter()
        .map(|f| f["transient"].clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn transient_data_is_replicated_to_every_hub_and_expires_once() {
    let hubs = mesh_of(3).await;
    let x = client_in_room(&hubs[0], "alice", "r1").await;
    let y = client_in_room(&hubs[1], "bob", "r1").await;
    quiet().await;
    x.frames();
    y.frames();
    // Set with a TTL of 5 s (nanoseconds) on hub 0.
    send_raw(
        &hubs[0],
        &x,
        json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": {"v": 1}, "ttl": 5_000_000_000u64}}),
    )
    .await;
    quiet().await;
    let set = json!({"type": "set", "key": "k", "value": {"v": 1}});
    assert_eq!(
        transients(&x),
        vec![set.clone()],
        "the sender hears its set once"
    );
    assert_eq!(transients(&y), [set], "the other hub's member once");
    let key = RoomKey {
        backend: "nc1".into(),
        room: "r1".into(),
    };
    for h in &hubs[..2] {
        let st = h.lock();
        assert!(st.rooms.get(&key).unwrap().transient.contains_key("k"));
    }

    // A member joining on the third hub gets the value in its initial data.
    let z = client_in_room(&hubs[2], "carol", "r1").await;
    quiet().await;
    let initial = z.of_type("transient");
    assert_eq!(initial.len(), 1, "{initial:?}");
    assert_eq!(initial[0]["transient"]["type"], "initial");
    assert_eq!(initial[0]["transient"]["data"]["k"], json!({"v": 1}));

    // Every hub's timer fires; the removal is applied once everywhere.
    tokio::time::sleep(Duration::from_secs(6)).await;
    quiet().await;
    let removed = json!({"type": "remove", "key": "k", "oldvalue": {"v": 1}});
    for c in [&x, &y, &z] {
        assert_eq!(transients(c), vec![removed.clone()]);
    }
    for h in &hubs {
        let st = h.lock();
        assert!(!st.rooms.get(&key).unwrap().transient.contains_key("k"));
    }
}

#[tokio::test(start_paused = true)]
async fn dialout_status_and_errors_reach_the_room_on_every_hub_once() {
    let hubs = mesh_of(3).await;
    let x = client_in_room(&hubs[0], "alice", "r1").await;
    let y = client_in_room(&hubs[1], "bob", "r1").await;
    // The bridge on a hub without a member of the room.
    let sip = internal(&hubs[2]).await;
    quiet().await;
    for c in [&x, &y, &sip] {
        c.frames();
    }
    let status = |s: &str| {
        json!({"type": "internal", "internal": {"type": "dialout", "dialout": {
            "type": "status", "roomid": "r1", "status": {"callid": "c1", "status": s, "cause": "", "code": 0}}}})
    };
    send_raw(&hubs[2], &sip, status("ringing")).await;
    quiet().await;
    let ringing = json!({"type": "set", "key": "callstatus_c1", "value": {"callid": "c1", "status": "ringing"}});
    assert_eq!(transients(&x), vec![ringing.clone()]);
    assert_eq!(transients(&y), [ringing]);

    // A rejected call's status goes away after 5 s, once on every hub.
    send_raw(&hubs[2], &sip, status("rejected")).await;
    quiet().await;
    assert_eq!(transients(&x).len(), 1);
    assert_eq!(transients(&y).len(), 1);
    tokio::time::sleep(Duration::from_secs(4)).await;
    quiet().await;
    assert!(transients(&x).is_empty(), "kept for 5 s");
    tokio::time::sleep(Duration::from_secs(2)).await;
    quiet().await;
    let gone = transients(&y);
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert_eq!(gone[0]["type"], "remove");
    assert_eq!(transients(&x).len(), 1);

    let error = json!({"type": "internal", "internal": {"type": "dialout", "dialout": {
        "type": "error", "roomid": "r1", "error": {"code": "busy", "message": "Busy"}}}});
    send_raw(&hubs[2], &sip, error).await;
    quiet().await;
    let expected = json!({"type": "error", "error": {"code": "busy", "message": "Busy"}});
    for c in [&x, &y] {
        let d: Vec<Value> = c
            .of_type("dialout")
            .into_iter()
            .map(|f| f["dialout"].clone())
            .collect();
        assert_eq!(d, vec![expected.clone()]);
    }
    assert!(sip.frames().is_empty(), "the bridge gets no error");
}

#[tokio::test(start_paused = true)]
async fn the_sessions_of_a_silent_hub_leave_the_rooms_of_the_others() {
    let (hubs, stops) = mesh_with_stops(3).await;
    let x = client_in_room(&hubs[0], "alice", "r1").await;
    let y = client_in_room(&hubs[1], "bob", "r1").await;
    let z = client_in_room(&hubs[2], "carol", "r1").await;
    quiet().await;
    x.frames();
    y.frames();
    let key = RoomKey {
        backend: "nc1".into(),
        room: "r1".into(),
    };
    // Hub 2 dies without a goodbye: no more heartbeats.
    stops[2].cancel();
    tokio::time::sleep(super::HEARTBEAT_INTERVAL).await;
    quiet().await;
    assert!(x.frames().is_empty(), "not gone before the process timeout");
    tokio::time::sleep(super::PROCESS_TIMEOUT + 2 * super::HEARTBEAT_INTERVAL).await;
    quiet().await;
    for (h, c) in [(&hubs[0], &x), (&hubs[1], &y)] {
        let leaves: Vec<Value> = c
            .frames()
            .into_iter()
            .filter(|f| f["event"]["type"] == "leave")
            .flat_map(|f| f["event"]["leave"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(leaves, vec![json!(&*z.sid)], "z leaves once");
        assert_eq!(h.known_processes(), 1, "the silent hub is forgotten");
        let st = h.lock();
        let members = &st.rooms.get(&key).unwrap().members;
        assert_eq!(members.len(), 2);
        assert!(!members.contains(&z.sid));
    }
}

#[test]
fn only_process_ids_are_taken_from_a_resume_id() {
    use super::owner_of;
    assert_eq!(owner_of("aB3-_x9Zrest"), Some("aB3-_x9Z"));
    // A client's resume id with a space must not reach a NATS subject.
    assert_eq!(owner_of("ab cdefgh0123"), None);
    assert_eq!(owner_of("ab.cdefgh0123"), None);
    assert_eq!(owner_of("short"), None);
}

#[tokio::test(start_paused = true)]
async fn a_message_to_a_member_that_just_left_on_its_hub_is_answered_by_nobody() {
    let hubs = mesh_of(2).await;
    let x = client_in_room(&hubs[0], "alice", "r1").await;
    let y = client_in_room(&hubs[1], "bob", "r1").await;
    quiet().await;
    x.frames();
    // Bob says bye on hub 1; hub 0 has not heard of it when alice sends.
    send_raw(&hubs[1], &y, json!({"type": "bye", "bye": {}})).await;
    send(
        &hubs[0],
        &x,
        json!({"type": "session", "sessionid": &*y.sid}),
        json!({"n": 1}),
    )
    .await;
    quiet().await;
    // As in the Go server: not delivered, and nothing is answered.
    let errors = x.of_type("error");
    assert!(errors.is_empty(), "{errors:?}");
}

#[tokio::test(start_paused = true)]
async fn a_transient_set_refused_in_bus_order_is_answered_to_its_sender() {
    let hubs = mesh_of(2).await;
    let x = client_in_room(&hubs[0], "alice", "r1").await;
    let y = client_in_room(&hubs[1], "bob", "r1").await;
    let max = hubs[0].config.transient.max_keys;
    for i in 0..max - 1 {
        send_raw(
            &hubs[0],
            &x,
            json!({"type": "transient", "transient": {"type": "set", "key": format!("k{i}"), "value": i}}),
        )
        .await;
    }
    quiet().await;
    x.frames();
    y.frames();
    // One key is left; each hub lets its own set pass, bus order decides.
    send_raw(
        &hubs[0],
        &x,
        json!({"id": "x1", "type": "transient", "transient": {"type": "set", "key": "kx", "value": 1}}),
    )
    .await;
    send_raw(
        &hubs[1],
        &y,
        json!({"id": "y1", "type": "transient", "transient": {"type": "set", "key": "ky", "value": 1}}),
    )
    .await;
    quiet().await;
    assert!(x.of_type("error").is_empty(), "the first one wins");
    let e = y.of_type("error");
    assert_eq!(e.len(), 1, "the later one is told once: {e:?}");
    assert_eq!(e[0]["id"], "y1");
    assert_eq!(e[0]["error"]["code"], "transient_limit_exceeded");
    let key = RoomKey {
        backend: "nc1".into(),
        room: "r1".into(),
    };
    for h in &hubs {
        let st = h.lock();
        let t = &st.rooms.get(&key).unwrap().transient;
        assert_eq!(t.len(), max);
        assert!(t.contains_key("kx") && !t.contains_key("ky"));
    }
}

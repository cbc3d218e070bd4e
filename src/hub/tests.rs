//! Unit tests of the hub's timer rules on paused tokio time: the clock
//! only moves when a test says so, so deadlines are checked to the
//! millisecond without sleeping.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::room::RoomKey;
use super::Hub;
use crate::api::client::HelloClientMessage;
use crate::backend::checksum;
use crate::config::Config;

const INTERNAL_SECRET: &str = "hub-test-internal-secret";

/// A hub whose only backend is never reached: internal clients need none.
fn hub() -> Arc<Hub> {
    hub_on(Arc::new(crate::bus::LocalBus::new()))
}

/// [`hub`] on a given bus.
pub(crate) fn hub_on(bus: Arc<dyn crate::bus::Bus>) -> Arc<Hub> {
    let config = Config::parse(&format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n\
         [clients]\ninternalsecret = {INTERNAL_SECRET}\n[backend]\nbackends = nc1\n\
         [nc1]\nurl = http://127.0.0.1:9\nsecret = backend-secret\n"
    ))
    .expect("config");
    Hub::new(Arc::new(config), crate::metrics::Metrics::new(), bus).expect("hub")
}

pub(super) fn internal_hello(resume_id: Option<&str>) -> HelloClientMessage {
    let random = "0123456789abcdef0123456789abcdef0123456789abcdef";
    let token = checksum::calculate(INTERNAL_SECRET.as_bytes(), random.as_bytes(), b"");
    let text = match resume_id {
        Some(r) => format!(r#"{{"version":"1.0","resumeid":"{r}"}}"#),
        None => format!(
            r#"{{"version":"1.0","auth":{{"type":"internal","params":{{"random":"{random}","token":"{token}"}}}}}}"#
        ),
    };
    serde_json::from_str(&text).expect("hello")
}

/// An internal session on a new connection: the connection, the hello's
/// outcome and the session's resume id.
async fn connected(
    hub: &Arc<Hub>,
) -> (Arc<super::outbox::Outbox>, super::hello::HelloOk, Arc<str>) {
    let conn = hub.new_outbox();
    let ok = hub.hello(&conn, None, internal_hello(None)).await.unwrap();
    let resume_id = hub.lock().sessions.map[&ok.sid]
        .resume_id
        .clone()
        .expect("resume id");
    (conn, ok, resume_id)
}

/// Lets the hub's background tasks run what is due at the current instant.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_disconnected_session_ends_exactly_when_its_resume_timeout_passes() {
    let hub = hub();
    let conn = hub.new_outbox();
    let ok = hub.hello(&conn, None, internal_hello(None)).await.unwrap();
    hub.connection_closed(&ok.sid, conn.conn_id);
    assert_eq!(hub.disconnected_sessions(), 1);
    let timeout = hub.config.limits.resume_timeout;
    tokio::time::advance(timeout - Duration::from_millis(1)).await;
    hub.expire_sessions(Instant::now());
    assert_eq!(hub.session_count(), 1, "kept until the timeout");
    tokio::time::advance(Duration::from_millis(1)).await;
    hub.expire_sessions(Instant::now());
    assert_eq!(hub.session_count(), 0, "ended at the timeout");
    assert_eq!(hub.disconnected_sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_session_resumed_in_time_is_not_expired_later() {
    let hub = hub();
    let (conn, ok, resume_id) = connected(&hub).await;
    hub.connection_closed(&ok.sid, conn.conn_id);
    let timeout = hub.config.limits.resume_timeout;
    tokio::time::advance(timeout / 2).await;
    let again = hub.new_outbox();
    let resumed = hub
        .hello(&again, None, internal_hello(Some(&resume_id)))
        .await
        .unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.sid, ok.sid);
    assert_eq!(hub.disconnected_sessions(), 0);
    tokio::time::advance(timeout).await;
    hub.expire_sessions(Instant::now());
    assert_eq!(hub.session_count(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_transient_value_expires_at_its_ttl_and_the_room_is_told() {
    let hub = hub();
    let cancel = CancellationToken::new();
    hub.spawn_tasks(cancel.clone());
    let conn = hub.new_outbox();
    let ok = hub.hello(&conn, None, internal_hello(None)).await.unwrap();
    let join = serde_json::from_str(r#"{"roomid":"r1"}"#).unwrap();
    hub.room_request(&ok.sid, None, join).await;
    let key = RoomKey {
        backend: ok.backend.clone(),
        room: "r1".into(),
    };
    assert!(hub.lock().rooms.contains_key(&key), "joined");
    let set = r#"{"type":"set","key":"k","value":1,"ttl":2000000000}"#;
    hub.transient(&ok.sid, None, serde_json::from_str(set).unwrap());
    let has = |hub: &Hub| {
        hub.lock()
            .rooms
            .get(&key)
            .is_some_and(|r| r.transient.contains_key("k"))
    };
    assert!(has(&hub));
    conn.drain();
    tokio::time::sleep(Duration::from_millis(1999)).await;
    settle().await;
    assert!(has(&hub), "kept until the TTL");
    assert_eq!(hub.transient_timer_count(), 1);
    tokio::time::sleep(Duration::from_millis(1)).await;
    settle().await;
    assert!(!has(&hub), "gone at the TTL");
    assert_eq!(hub.transient_timer_count(), 0);
    let told = conn.drain().frames;
    assert_eq!(told.len(), 1, "{told:?}");
    let v: serde_json::Value = serde_json::from_slice(told[0].as_bytes()).unwrap();
    assert_eq!(v["transient"]["type"], "remove");
    assert_eq!(v["transient"]["key"], "k");
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_session_whose_resume_queue_overflows_ends_when_the_lock_is_released() {
    let hub = hub();
    let conn = hub.new_outbox();
    let ok = hub.hello(&conn, None, internal_hello(None)).await.unwrap();
    hub.connection_closed(&ok.sid, conn.conn_id);
    let limit = hub.config.limits.resume_queue_messages;
    {
        let mut st = hub.lock();
        for _ in 0..=limit {
            st.sessions
                .deliver(&ok.sid, &crate::api::server::Frame::from("{}"));
        }
        assert!(st.sessions.map.contains_key(&ok.sid), "not under the lock");
    }
    assert_eq!(hub.session_count(), 0, "ended when the lock was released");
}

#[tokio::test(start_paused = true)]
async fn nextcloud_is_told_of_a_removed_virtual_session_only_after_the_lock_is_released() {
    let hub = hub();
    let conn = hub.new_outbox();
    let ok = hub.hello(&conn, None, internal_hello(None)).await.unwrap();
    let join = serde_json::from_str(r#"{"roomid":"r1"}"#).unwrap();
    hub.room_request(&ok.sid, None, join).await;
    // As once Nextcloud agreed (no Nextcloud here).
    let add = serde_json::from_str(r#"{"sessionid":"v1","roomid":"r1"}"#).unwrap();
    hub.mutate(|st| {
        let pending = st.reserve_virtual(&ok.sid, add).unwrap().unwrap();
        st.add_virtual(&ok.sid, pending);
    });
    let vsid = hub.lock().sessions.map[&ok.sid].virtuals["v1"].clone();
    {
        let mut st = hub.lock();
        st.end_session(&vsid, None);
        assert!(
            matches!(&st.effects[..], [super::Effect::VirtualRemoved(nc)] if nc.vsid == vsid),
            "recorded under the lock, not sent"
        );
    }
    assert!(
        hub.lock().effects.is_empty(),
        "sent once the lock was released"
    );
}

#[tokio::test(start_paused = true)]
async fn mcu_requests_of_a_session_run_sixteen_at_once_queue_in_order_and_then_are_refused() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    let hub = hub();
    let conn = hub.new_outbox();
    let ok = hub.hello(&conn, None, internal_hello(None)).await.unwrap();
    conn.drain();
    let (release, released) = tokio::sync::watch::channel(false);
    let (started, done) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let task = |n: usize| {
        let mut released = released.clone();
        let (started, done, order) = (started.clone(), done.clone(), order.clone());
        async move {
            started.fetch_add(1, SeqCst);
            order.lock().unwrap().push(n);
            let _ = released.wait_for(|r| *r).await;
            done.fetch_add(1, SeqCst);
        }
    };
    // 16 run and 256 wait; the reader is never held: `mcu_task` returns
    // nothing it could wait for.
    for n in 0..16 + 256 {
        let () = hub.mcu_task(&ok.sid, Some("r"), task(n));
    }
    settle().await;
    assert_eq!(started.load(SeqCst), 16, "sixteen run at once");
    assert!(conn.drain().frames.is_empty(), "none refused yet");
    // One more is refused with the request's id.
    hub.mcu_task(&ok.sid, Some("r-over"), task(999));
    let frames: Vec<serde_json::Value> = conn
        .drain()
        .frames
        .iter()
        .map(|f| serde_json::from_slice(f.as_bytes()).unwrap())
        .collect();
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["id"], "r-over");
    assert_eq!(frames[0]["error"]["code"], "too_many_requests");
    // Released: every queued one runs, in the order they came.
    release.send_replace(true);
    for _ in 0..50 {
        settle().await;
    }
    assert_eq!(done.load(SeqCst), 16 + 256);
    let order = order.lock().unwrap().clone();
    assert_eq!(order[16..], (16..16 + 256).collect::<Vec<_>>()[..]);
}

/// A client that does not read is closed with 1013 once its outbox is full;
/// with the default limits it resumes with everything: what was in the
/// outbox (up to `outboxbytes`, as big as the resume queue's byte limit)
/// is kept in full, the resume queue's limits count what comes after.
#[tokio::test(start_paused = true)]
async fn a_1013_close_with_default_limits_resumes_with_every_frame() {
    let hub = hub();
    let (conn, ok, resume_id) = connected(&hub).await;
    conn.drain();
    let limit = hub.config.limits.outbox_bytes;
    assert!(limit >= hub.config.limits.resume_queue_bytes, "defaults");
    let body = "x".repeat(16 * 1024);
    let frames = limit / (16 * 1024) + 40;
    for i in 0..frames {
        let f = crate::api::server::Frame::from(format!(r#"{{"i":{i},"p":"{body}"}}"#));
        hub.lock().sessions.deliver(&ok.sid, &f);
    }
    assert!(conn.is_closing(), "closed with 1013");
    // (Sessions whose resume queue overflowed end when the lock is let go.)
    assert_eq!(hub.session_count(), 1, "not ended");
    let again = hub.new_outbox();
    let resumed = hub
        .hello(&again, None, internal_hello(Some(&resume_id)))
        .await
        .unwrap();
    assert!(resumed.resumed);
    let got: Vec<serde_json::Value> = again
        .drain()
        .frames
        .iter()
        .map(|f| serde_json::from_slice(f.as_bytes()).unwrap())
        .filter(|v: &serde_json::Value| v.get("i").is_some())
        .collect();
    assert_eq!(got.len(), frames, "every frame after the resume");
    assert!(got.iter().enumerate().all(|(n, v)| v["i"] == n));
}

/// Frames the writer had not taken yet when the connection went away (or
/// was replaced by a resume) go on with the session, in order.
#[tokio::test(start_paused = true)]
async fn frames_still_in_the_outbox_reach_the_resumed_connection() {
    let hub = hub();
    let frame = |i: usize| crate::api::server::Frame::from(format!(r#"{{"i":{i}}}"#));
    let numbers = |c: &Arc<super::outbox::Outbox>| -> Vec<serde_json::Value> {
        c.drain()
            .frames
            .iter()
            .map(|f| serde_json::from_slice::<serde_json::Value>(f.as_bytes()).unwrap())
            .filter(|v| v.get("i").is_some())
            .map(|v| v["i"].clone())
            .collect()
    };
    let (conn, ok, resume_id) = connected(&hub).await;
    conn.drain();
    // The connection drops with two frames not yet written.
    hub.lock().sessions.deliver(&ok.sid, &frame(1));
    hub.lock().sessions.deliver(&ok.sid, &frame(2));
    hub.connection_closed(&ok.sid, conn.conn_id);
    hub.lock().sessions.deliver(&ok.sid, &frame(3));
    let second = hub.new_outbox();
    hub.hello(&second, None, internal_hello(Some(&resume_id)))
        .await
        .unwrap();
    assert_eq!(numbers(&second), [1, 2, 3]);
    // The reader closes its connection (e.g. a read timeout) before the
    // writer took a frame; one more meets the closing outbox and is
    // queued: after the resume they come in the order they were sent.
    hub.lock().sessions.deliver(&ok.sid, &frame(10));
    second.close(super::outbox::CloseReason::Transport(1000, "read timeout"));
    hub.lock().sessions.deliver(&ok.sid, &frame(11));
    hub.connection_closed(&ok.sid, second.conn_id);
    let second = hub.new_outbox();
    hub.hello(&second, None, internal_hello(Some(&resume_id)))
        .await
        .unwrap();
    assert_eq!(numbers(&second), [10, 11]);
    // A resume replaces a connection that still has frames waiting.
    hub.lock().sessions.deliver(&ok.sid, &frame(4));
    let third = hub.new_outbox();
    hub.hello(&third, None, internal_hello(Some(&resume_id)))
        .await
        .unwrap();
    assert_eq!(numbers(&third), [4]);
    let old: Vec<serde_json::Value> = second
        .drain()
        .frames
        .iter()
        .map(|f| serde_json::from_slice(f.as_bytes()).unwrap())
        .collect();
    assert_eq!(old.len(), 1, "only the bye: {old:?}");
    assert_eq!(old[0]["bye"]["reason"], "session_resumed");
}

//! A session in a federated room across a restart of its own server (A):
//! alice, a user of NC-A, is in a conversation hosted by NC-B through
//! server A, which holds her link to server B; bob is on B. A stops with
//! SIGTERM and starts again on its state file (a single process), or hands
//! her session to another process (a rolling restart over a real
//! nats-server): her link resumes its session on B, she resumes hers on A,
//! and nobody sees her leave.

use serde_json::{json, Value};

use crate::federation::{data, token};
use crate::support::*;

/// NC-A, and NC-B, which supports federation.
pub(crate) async fn clouds() -> (FakeNextcloud, FakeNextcloud) {
    let nc_a = FakeNextcloud::start().await;
    let nc_b = FakeNextcloud::start().await;
    {
        let mut st = nc_b.state.lock().unwrap();
        st.token_key = Some(data("ec.pub"));
        st.extra_features = vec!["federation-v2".into()];
    }
    (nc_a, nc_b)
}

/// A's configuration: B is on loopback over plain ws://, refused by
/// default; pings every second.
pub(crate) const A_CONF: &str =
    "[backend]\npinginterval = 1\n[federation]\nallowips = 127.0.0.1\nallowhttp = true\n";

/// Alice on the server at `a_ws` joins `remotetoken` of NC-B on the server
/// at `b_http`; returns her client and the session id B gave her link (R),
/// once bob saw her join.
pub(crate) async fn federated_alice(
    a_ws: &str,
    nc_a: &FakeNextcloud,
    nc_b: &FakeNextcloud,
    b_http: &str,
    bob: &mut Client,
) -> (Client, String) {
    let mut alice = Client::connect(a_ws).await;
    alice.expect_type("welcome").await;
    alice
        .hello_v1(&nc_a.backend_url(), json!({"userid": "alice"}))
        .await;
    let federation = json!({"signaling": format!("{b_http}/"), "url": nc_b.backend_url(),
        "roomid": "remotetoken", "token": token(nc_b, nc_a, "ec.key")});
    alice
        .send(json!({"id": "7", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": federation}}))
        .await;
    let r = alice
        .wait_for(|m| m["type"] == "room" || m["type"] == "error")
        .await;
    assert_eq!(r["room"]["roomid"], "localtoken", "{r}");
    let remote = federated_join(bob).await;
    alice.wait_join_of(&bob.session_id).await;
    (alice, remote)
}

/// The session id of the next federated session `bob` sees join.
async fn federated_join(bob: &mut Client) -> String {
    let j = bob
        .wait_for(|m| m["event"]["type"] == "join" && m.to_string().contains("\"federated\":true"))
        .await;
    j["event"]["join"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["federated"] == true)
        .unwrap()["sessionid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// A single process of A keeping its sessions in a fresh state directory
/// (returned, for the test to remove).
pub(crate) async fn a_with_state(nc_a: &FakeNextcloud) -> (Node, std::path::PathBuf) {
    let state = fresh_dir("spreed-state");
    let a = Node::start(
        nc_a,
        A_CONF,
        &[("STATE_DIRECTORY", state.to_str().unwrap())],
    )
    .await;
    (a, state)
}

/// A's configuration for a process of a cluster on `nats`.
pub(crate) fn cluster_conf(nats: &NatsServer) -> String {
    format!("{A_CONF}[nats]\nurl = {}\n", nats.url())
}

/// `a` stops with SIGTERM: what `alice` got until her connection closed
/// (with 1012), once `a` exited with 0.
pub(crate) async fn stop(a: Node, alice: &mut Client) -> (Node, Vec<Value>) {
    a.signal("-TERM");
    let mut seen = Vec::new();
    loop {
        match alice.recv_or_close().await {
            Ok(m) => seen.push(m),
            Err(code) => {
                assert_eq!(code, Some(1012));
                break;
            }
        }
    }
    let mut a = a;
    assert_eq!(a.exit_code(TIMEOUT).await, Some(0));
    (a, seen)
}

/// `alice` resumes her session on `a`.
pub(crate) async fn resumed(a: &Node, alice: &Client) -> Client {
    let (alice2, hello) = resume(a, &alice.resume_id).await;
    assert_eq!(
        hello["hello"]["sessionid"],
        alice.session_id.as_str(),
        "{hello}"
    );
    alice2
}

/// `from` sends `{"n": n}` to the session `to`.
pub(crate) async fn send_n(from: &mut Client, to: &str, n: i64) {
    from.message_to(
        json!({"type": "session", "sessionid": to}),
        json!({ "n": n }),
    )
    .await;
}

/// Messages of `c` until one matches `pred` (included).
pub(crate) async fn until(c: &mut Client, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let m = c.recv().await;
        let done = pred(&m);
        seen.push(m);
        if done {
            return seen;
        }
    }
}

pub(crate) fn is_leave(m: &Value) -> bool {
    m["type"] == "event" && m["event"]["type"] == "leave"
}

/// The message with data `{"n": n}`.
pub(crate) fn numbered(m: &Value, n: i64) -> bool {
    m["type"] == "message" && m["message"]["data"]["n"] == n
}

/// Pings to `nc` naming Nextcloud session `nc_session`.
fn pinged(nc: &FakeNextcloud, nc_session: &str) -> usize {
    nc.requests("ping")
        .iter()
        .filter(|r| {
            r.body["ping"]["entries"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["sessionid"] == nc_session))
        })
        .count()
}

/// After the restart: alice (resumed on A) is told her link resumed on B,
/// messages go both ways with the ids each side knows, bob saw no leave
/// since A stopped, NC-B was told no leave
/// and NC-A was never asked about a room.
async fn still_together(
    alice: &mut Client,
    bob: &mut Client,
    remote: &str,
    nc_a: &FakeNextcloud,
    nc_b: &FakeNextcloud,
) {
    let seen = until(alice, |m| m["event"]["type"] == "federation_resumed").await;
    let resumed = seen.last().unwrap();
    assert_eq!(resumed["event"]["resumed"], true, "{seen:?}");
    assert!(!seen.iter().any(is_leave), "{seen:?}");
    send_n(bob, remote, 1).await;
    let seen = until(alice, |m| numbered(m, 1)).await;
    let m = seen.last().unwrap();
    assert_eq!(m["message"]["sender"]["sessionid"], bob.session_id.as_str());
    assert!(!seen.iter().any(is_leave), "{seen:?}");
    send_n(alice, &bob.session_id, 2).await;
    let bob_seen = until(bob, |m| numbered(m, 2)).await;
    let m = bob_seen.last().unwrap();
    assert_eq!(m["message"]["sender"]["sessionid"], remote);
    assert!(!bob_seen.iter().any(is_leave), "{bob_seen:?}");
    let rooms = nc_b.requests("room");
    assert!(
        rooms.iter().all(|r| r.body["room"]["action"] != "leave"),
        "{rooms:?}"
    );
    assert!(nc_a.requests("room").is_empty());
}

/// Alice federated through process a0 of A's cluster of two (a0, a1) on
/// a nats-server, with bob on B. The fields go in the reverse order of
/// their start: they are dropped as the locals of a test would be.
struct Cluster {
    alice: Client,
    remote: String,
    bob: Client,
    a1: Node,
    a0: Node,
    _b: TestServer,
    nc_b: FakeNextcloud,
    nc_a: FakeNextcloud,
    _nats: NatsServer,
}

impl Cluster {
    async fn start() -> Cluster {
        let nats = NatsServer::start().await;
        let (nc_a, nc_b) = clouds().await;
        let b = TestServer::start_on(nc_b.clone(), "").await;
        let conf = cluster_conf(&nats);
        let a0 = Node::start(&nc_a, &conf, &[]).await;
        let a1 = Node::start(&nc_a, &conf, &[]).await;
        let mut bob = b.joined_client("bob", "remotetoken").await;
        let (alice, remote) = federated_alice(&a0.ws_url(), &nc_a, &nc_b, &b.url, &mut bob).await;
        Cluster {
            alice,
            remote,
            bob,
            a1,
            a0,
            _b: b,
            nc_b,
            nc_a,
            _nats: nats,
        }
    }
}

#[tokio::test]
async fn a_federated_session_and_its_link_are_kept_across_a_restart_without_anyone_leaving() {
    let (nc_a, nc_b) = clouds().await;
    let b = TestServer::start_on(nc_b.clone(), "").await;
    let (a, state) = a_with_state(&nc_a).await;
    let mut bob = b.joined_client("bob", "remotetoken").await;
    let (mut alice, remote) = federated_alice(&a.ws_url(), &nc_a, &nc_b, &b.url, &mut bob).await;

    let (a, _) = stop(a, &mut alice).await;
    let a = a.restart().await;
    a.proc
        .wait_line(0, |l| l.contains("sessions kept from before the restart"))
        .await;
    let mut alice2 = resumed(&a, &alice).await;
    still_together(&mut alice2, &mut bob, &remote, &nc_a, &nc_b).await;
    // NC-A still hears that she is there.
    let before = pinged(&nc_a, "nc-alice");
    nc_a.wait_all("ping", |_| pinged(&nc_a, "nc-alice") > before)
        .await;
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test]
async fn a_rolling_restart_hands_a_federated_session_and_its_link_to_another_process() {
    // Bound first: the fields not taken live to the end of the test.
    let cluster = Cluster::start().await;
    let Cluster {
        nc_a,
        nc_b,
        a0,
        a1,
        mut bob,
        mut alice,
        remote,
        ..
    } = cluster;

    let (_a0, _) = stop(a0, &mut alice).await;
    let mut alice2 = resumed(&a1, &alice).await;
    still_together(&mut alice2, &mut bob, &remote, &nc_a, &nc_b).await;
    let before = pinged(&nc_a, "nc-alice");
    nc_a.wait_all("ping", |_| pinged(&nc_a, "nc-alice") > before)
        .await;
}

#[tokio::test]
async fn a_link_the_remote_forgot_during_the_restart_joins_again_as_after_a_lost_connection() {
    let (nc_a, nc_b) = clouds().await;
    // B forgets a session one second after its connection went.
    let b = TestServer::start_on(nc_b.clone(), "[sessions]\nresumetimeout = 1\n").await;
    let (a, state) = a_with_state(&nc_a).await;
    let mut bob = b.joined_client("bob", "remotetoken").await;
    let (mut alice, remote) = federated_alice(&a.ws_url(), &nc_a, &nc_b, &b.url, &mut bob).await;

    let (a, _) = stop(a, &mut alice).await;
    // B forgot her link's session: bob sees it leave.
    let l = bob.wait_for(is_leave).await;
    assert_eq!(l["event"]["leave"], json!([remote]), "{l}");
    let a = a.restart().await;
    let mut alice2 = resumed(&a, &alice).await;
    // The link joined again with a new session on B (the token is still
    // valid): she is told it did not resume, bob sees the new session.
    let seen = until(&mut alice2, |m| m["event"]["type"] == "federation_resumed").await;
    assert_eq!(seen.last().unwrap()["event"]["resumed"], false, "{seen:?}");
    let again = federated_join(&mut bob).await;
    assert_ne!(again, remote);
    send_n(&mut alice2, &bob.session_id, 3).await;
    let seen = until(&mut bob, |m| numbered(m, 3)).await;
    assert_eq!(
        seen.last().unwrap()["message"]["sender"]["sessionid"],
        again.as_str()
    );
    send_n(&mut bob, &again, 4).await;
    let seen = until(&mut alice2, |m| numbered(m, 4)).await;
    assert_eq!(
        seen.last().unwrap()["message"]["sender"]["sessionid"],
        bob.session_id.as_str()
    );
    assert!(nc_a.requests("room").is_empty());
    let _ = std::fs::remove_dir_all(&state);
}

#[tokio::test]
async fn a_federated_client_resuming_on_another_process_takes_its_link_along() {
    // Bound first: the fields not taken live to the end of the test.
    let cluster = Cluster::start().await;
    let Cluster {
        nc_a,
        nc_b,
        a1,
        mut bob,
        alice,
        remote,
        ..
    } = cluster;
    let (sid, resume_id) = (alice.session_id.clone(), alice.resume_id.clone());
    // Her connection drops; she comes back on the other process.
    drop(alice);
    let (mut alice2, hello) = resume(&a1, &resume_id).await;
    assert_eq!(hello["hello"]["sessionid"], sid.as_str(), "{hello}");
    // (A link left on a0 that said bye would have made bob see a leave.)
    still_together(&mut alice2, &mut bob, &remote, &nc_a, &nc_b).await;
}

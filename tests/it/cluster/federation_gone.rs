//! The hosting side of a federated conversation is a cluster: when the
//! process holding the federated session vanishes, another process tells
//! Nextcloud it left, with the session's actor like the join.

use serde_json::json;

use super::handover::nodes;
use crate::federation::{data, token};
use crate::support::*;

#[tokio::test]
async fn the_leave_for_a_vanished_process_federated_member_names_its_actor() {
    let nats = NatsServer::start().await;
    let nc_a = FakeNextcloud::start().await;
    let nc_b = FakeNextcloud::start().await;
    {
        let mut st = nc_b.state.lock().unwrap();
        st.token_key = Some(data("ec.pub"));
        st.extra_features = vec!["federation-v2".into()];
    }
    let mut b = nodes(&nats, &nc_b, 2, "").await;
    let a = TestServer::start_on(
        nc_a.clone(),
        "[federation]\nallowips = 127.0.0.1\nallowhttp = true\n",
    )
    .await;
    let mut bob = b[1].client_in_room(&nc_b, "bob", "remotetoken").await;
    // Alice (of NC-A) joins through A, which dials the first process of B.
    let mut alice = a.connect().await;
    alice.expect_type("welcome").await;
    alice
        .hello_v1(&nc_a.backend_url(), json!({"userid": "alice"}))
        .await;
    let federation = json!({"signaling": format!("{}/", b[0].http_url()), "url": nc_b.backend_url(),
        "roomid": "remotetoken", "token": token(&nc_b, &nc_a, "ec.key")});
    alice
        .send(json!({"id": "7", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": federation}}))
        .await;
    let r = alice
        .wait_for(|m| m["type"] == "room" || m["type"] == "error")
        .await;
    assert_eq!(r["type"], "room", "{r}");
    let j = bob
        .wait_for(|m| m["event"]["type"] == "join" && m.to_string().contains("\"federated\":true"))
        .await;
    let join = nc_b
        .wait_for("room", |r| {
            r["room"]["action"] != "leave" && r["room"]["sessionid"] == "nc-alice"
        })
        .await;
    assert_eq!(join.body["room"]["actortype"], "federated_users", "{j}");

    // The process holding alice's federated session vanishes.
    b[0].signal("-KILL");
    let _ = b[0].exit_code(TIMEOUT).await;
    // (Gone once it missed its heartbeats for 5 s.)
    bob.wait_for_within(std::time::Duration::from_secs(15), |m| {
        m["event"]["type"] == "leave"
    })
    .await;
    let leave = nc_b
        .wait_for("room", |r| {
            r["room"]["action"] == "leave" && r["room"]["sessionid"] == "nc-alice"
        })
        .await;
    assert_eq!(
        leave.body["room"]["actortype"], "federated_users",
        "{}",
        leave.body
    );
    assert_eq!(
        leave.body["room"]["actorid"], join.body["room"]["actorid"],
        "{}",
        leave.body
    );
    assert!(leave.body["room"]["actorid"].is_string(), "{}", leave.body);
    a.stop().await;
}

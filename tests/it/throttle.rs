//! The brute-force throttle counts clients, not the server: internal
//! clients (HMAC of the shared secret) and the server's own outgoing
//! connections are neither refused nor counted by address.

use crate::support::*;
use serde_json::{json, Value};

/// A server that blocks an address after `n` failed hellos.
async fn throttling_after(n: u32) -> TestServer {
    TestServer::start_with(&format!(
        "[clients]\nmaxfailedhellos = {n}\nfailedhellowindow = 60\n"
    ))
    .await
}

/// Tries to resume a made-up session; returns the error code.
async fn guess_resume(c: &mut Client) -> String {
    c.send(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": "guessed-resume-id"}}))
        .await;
    let m = c.expect_type("error").await;
    m["error"]["code"].as_str().unwrap().to_string()
}

/// The sum of a metric's series (all label values).
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn internal_clients_get_in_from_a_throttled_address() {
    let ts = throttling_after(2).await;
    let mut c = ts.connect().await;
    c.expect_type("welcome").await;
    assert_eq!(guess_resume(&mut c).await, "no_such_session");
    assert_eq!(guess_resume(&mut c).await, "no_such_session");
    assert_eq!(guess_resume(&mut c).await, "too_many_requests");
    // The SIP bridge on the same address: its HMAC gets it in.
    let (mut sip, _) = internal_client(&ts.ws_url(), &[]).await;
    // And its resume after a broken connection.
    let mut again = ts.connect().await;
    again.expect_type("welcome").await;
    let resume = {
        let mut c = ts.connect().await;
        c.expect_type("welcome").await;
        c.send(internal_hello("abcdefghijabcdefghijabcdefghijabcdefghij"))
            .await;
        let h = c.expect_type("hello").await;
        h["hello"]["resumeid"].as_str().unwrap().to_string()
    };
    again
        .send(json!({"id": "r2", "type": "hello", "hello": {"version": "1.0", "resumeid": resume}}))
        .await;
    assert_eq!(again.expect_type("hello").await["id"], "r2");
    // A wrong token is no proof: the address stays refused.
    let mut wrong = ts.connect().await;
    wrong.expect_type("welcome").await;
    let mut h = internal_hello("0123456789012345678901234567890123456789");
    h["hello"]["auth"]["params"]["token"] = json!("0".repeat(64));
    wrong.send(h).await;
    assert_eq!(
        wrong.expect_type("error").await["error"]["code"],
        "too_many_requests"
    );
    sip.send(json!({"id": "p", "type": "room", "room": {"roomid": ""}}))
        .await;
    sip.wait_for(|m| m["id"] == "p").await;
    ts.stop().await;
}

/// A federated join pointed at the server itself: its own hello to itself
/// fails, and that is not a failure of 127.0.0.1.
#[tokio::test]
async fn the_servers_own_dials_are_not_counted() {
    // Dialling itself (loopback, plain ws://) is refused by default.
    let ts = TestServer::start_with(
        "[clients]\nmaxfailedhellos = 1\nfailedhellowindow = 60\n\
         [federation]\nallowips = 127.0.0.1\nallowhttp = true\n",
    )
    .await;
    let mut c = ts.client(Some("alice")).await;
    let fed: Value = json!({"signaling": format!("{}/", ts.url), "url": "http://127.0.0.1:1/nextcloud", "roomid": "x", "token": "bad"});
    c.send(json!({"id": "j", "type": "room", "room": {"roomid": "localtoken", "sessionid": "nc-alice", "federation": fed}})).await;
    let e = c.wait_for(|m| m["type"] == "error").await;
    assert_eq!(e["id"], "j", "{e}");
    // Another client from the same address is not refused.
    let mut bob = ts.connect().await;
    bob.expect_type("welcome").await;
    bob.send(json!({"id": "h", "type": "hello", "hello": {"version": "1.0", "auth": {"url": ts.nc.backend_url(), "params": {"userid": "bob"}}}}))
        .await;
    let h = bob.wait_for(|m| m["id"] == "h").await;
    assert_eq!(h["type"], "hello", "{h}");
    let m = ts.metrics_text().await;
    assert_eq!(metric_sum(&m, "signaling_throttle_delayed_total"), 0);
    ts.stop().await;
}

/// A client behind the (loopback) proxy, named `ip` by X-Forwarded-For.
async fn via_proxy(ts: &TestServer, ip: &str) -> Result<Client, u16> {
    let mut c = Client::upgrade(request_with(&ts.ws_url(), &[("X-Forwarded-For", ip)])).await?;
    c.expect_type("welcome").await;
    Ok(c)
}

/// A host has a whole /64: its addresses count as one.
#[tokio::test]
async fn ipv6_clients_are_throttled_and_capped_by_their_64() {
    let ts = TestServer::start_with(
        "[clients]\nmaxfailedhellos = 1\nfailedhellowindow = 60\n[http]\nmaxconnectionsperip = 2\n",
    )
    .await;
    let mut a = via_proxy(&ts, "2001:db8:1:2::1").await.unwrap();
    assert_eq!(guess_resume(&mut a).await, "no_such_session");
    let mut b = via_proxy(&ts, "2001:db8:1:2:aaaa::2").await.unwrap();
    assert_eq!(guess_resume(&mut b).await, "too_many_requests");
    // The cap of two is reached: a third address of the /64 is refused.
    assert_eq!(via_proxy(&ts, "2001:db8:1:2::3").await.err(), Some(429));
    // Another /64 is another client.
    let mut c = via_proxy(&ts, "2001:db8:1:3::1").await.unwrap();
    assert_eq!(guess_resume(&mut c).await, "no_such_session");
    ts.stop().await;
}

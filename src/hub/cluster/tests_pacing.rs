//! Backpressure across processes on the bus mesh, on paused time: a
//! congested member holds the remote sender back, not the bus, and a
//! stalled one only for `STALL_WAIT`.

use serde_json::json;
use tokio::time::Instant;

use super::tests::{client_in_room, internal, mesh_of, quiet, send};
use crate::hub::outbox::STALL_WAIT;

#[tokio::test(start_paused = true)]
async fn a_congested_member_holds_the_remote_sender_not_the_bus_and_a_stalled_one_briefly() {
    let hubs = mesh_of(2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let x = client_in_room(a, "x", "r").await;
    let y = client_in_room(b, "y", "r").await;
    let (p, q) = (internal(a).await, internal(b).await);
    quiet().await;
    for c in [&x, &y, &p, &q] {
        c.frames();
    }
    let pad = "x".repeat(100_000);
    let room = json!({"type": "room"});
    // y reads nothing: its outbox passes half of its 1 MiB at the sixth.
    for i in 0..6 {
        send(a, &x, room.clone(), json!({"i": i, "pad": pad})).await;
        quiet().await;
    }
    assert!(a.pacing.is_held(&x.sid), "b holds the sender back");
    // b's bus task is not held up by y: other traffic flows at once.
    let to_q = json!({"type": "session", "sessionid": &*q.sid});
    send(a, &p, to_q.clone(), json!({"probe": 1})).await;
    quiet().await;
    assert_eq!(q.messages(), [json!({"probe": 1})]);
    // x's next message goes, and x is read again once b gave up on y, whose
    // socket took nothing: after STALL_WAIT, far before slowreceiverwait.
    let t = Instant::now();
    send(a, &x, room.clone(), json!({"i": 6, "pad": pad})).await;
    let held = t.elapsed();
    // (The wait for y began two quiet() steps before t.)
    assert!(held > STALL_WAIT / 2 && held <= STALL_WAIT, "{held:?}");
    quiet().await;
    assert!(!a.pacing.is_held(&x.sid));
    let got: Vec<_> = y.messages().iter().map(|m| m["i"].clone()).collect();
    assert_eq!(
        got,
        (0..7).map(|i| json!(i)).collect::<Vec<_>>(),
        "in order"
    );

    // A member that reads: the sender is released as soon as it drained.
    for i in 7..13 {
        send(a, &x, room.clone(), json!({"i": i, "pad": pad})).await;
        quiet().await;
    }
    assert!(a.pacing.is_held(&x.sid));
    let t = Instant::now();
    assert_eq!(y.messages().len(), 6);
    quiet().await;
    assert!(!a.pacing.is_held(&x.sid), "released when y drained");
    assert!(t.elapsed() < STALL_WAIT);
}

#[tokio::test(start_paused = true)]
async fn a_session_message_waiting_behind_a_congested_recipient_holds_its_sender() {
    let hubs = mesh_of(2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let z = client_in_room(a, "z", "r1").await;
    let x = client_in_room(a, "x", "r2").await;
    let y = client_in_room(b, "y", "r3").await;
    quiet().await;
    for c in [&x, &y, &z] {
        c.frames();
    }
    // y reads nothing: z's sixth message leaves it more than half full.
    let pad = "x".repeat(100_000);
    let to_y = json!({"type": "session", "sessionid": &*y.sid});
    for i in 0..6 {
        send(a, &z, to_y.clone(), json!({"i": i, "pad": pad})).await;
        quiet().await;
    }
    assert!(a.pacing.is_held(&z.sid), "y's congestion holds z back");
    // x's message waits behind z's: x is held back as well.
    send(a, &x, to_y, json!({"x": 1})).await;
    quiet().await;
    assert!(
        a.pacing.is_held(&x.sid),
        "x is held while its message waits"
    );
}

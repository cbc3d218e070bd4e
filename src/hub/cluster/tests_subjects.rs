//! Subjects by audience on the bus mesh: a hub subscribes to a room from
//! its first member's join until the room is gone, to a user while it has
//! sessions of the user, and receives nothing else of others.

use std::sync::Arc;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::tests::{client_in_room, quiet, send};
use crate::bus::mesh::{Mesh, MeshBus};
use crate::bus::{room_subject, user_subject};
use crate::hub::tests::hub_on;
use crate::hub::Hub;

/// `n` hubs on one mesh, with their buses.
async fn mesh_with_buses(n: usize) -> Vec<(Arc<Hub>, Arc<MeshBus>)> {
    let mesh = Mesh::new();
    let mut out = Vec::new();
    for _ in 0..n {
        let (bus, inbound) = mesh.join();
        let hub = hub_on(bus.clone());
        hub.spawn_cluster(inbound, CancellationToken::new());
        hub.discover_peers().await;
        out.push((hub, bus));
    }
    quiet().await;
    out
}

#[tokio::test(start_paused = true)]
async fn rooms_and_users_are_subscribed_while_they_have_sessions_here() {
    let m = mesh_with_buses(3).await;
    let ((a, bus_a), (b, bus_b), (_, bus_c)) = (&m[0], &m[1], &m[2]);
    let room = room_subject("nc1", "r");
    let (ua, ub) = (user_subject("nc1", "ann"), user_subject("nc1", "ben"));
    assert!(!bus_a.subscribed(&room) && !bus_a.subscribed(&ua));
    let x = client_in_room(a, "ann", "r").await;
    let y = client_in_room(b, "ben", "r").await;
    quiet().await;
    assert!(bus_a.subscribed(&room) && bus_b.subscribed(&room));
    assert!(bus_a.subscribed(&ua) && !bus_a.subscribed(&ub));
    assert!(bus_b.subscribed(&ub) && !bus_b.subscribed(&ua));
    assert!(!bus_c.subscribed(&room) && !bus_c.subscribed(&ua) && !bus_c.subscribed(&ub));
    x.frames();
    y.frames();
    // Room and user messages reach their audience.
    send(a, &x, json!({"type": "room"}), json!({"n": 1})).await;
    send(
        a,
        &x,
        json!({"type": "user", "userid": "ben"}),
        json!({"n": 2}),
    )
    .await;
    quiet().await;
    assert_eq!(y.messages(), [json!({"n": 1}), json!({"n": 2})]);
    // Ben's session ends: his process stops receiving the room and him.
    b.lock().end_session(&y.sid, None);
    quiet().await;
    assert!(!bus_b.subscribed(&room) && !bus_b.subscribed(&ub));
    assert!(bus_a.subscribed(&room), "ann is still there");
}

#[tokio::test(start_paused = true)]
async fn a_leave_of_a_member_never_known_is_not_remembered_for_ever() {
    let m = mesh_with_buses(2).await;
    let ((a, bus_a), (b, _)) = (&m[0], &m[1]);
    let _x = client_in_room(a, "ann", "r").await;
    let _y = client_in_room(b, "ben", "r").await;
    quiet().await;
    // A leave whose join b never saw (no snapshot on its way).
    let h = crate::bus::Header::Left {
        from: crate::bus::Bus::pid(&**bus_a).to_string(),
        backend: "nc1".into(),
        room: "r".into(),
        sid: format!("{}-unknown", crate::bus::Bus::pid(&**bus_a)),
    };
    crate::bus::Bus::publish(
        &**bus_a,
        room_subject("nc1", "r"),
        crate::bus::encode(&h, None),
    );
    quiet().await;
    let key = crate::hub::room::RoomKey {
        backend: "nc1".into(),
        room: "r".into(),
    };
    assert!(b.lock().rooms.get(&key).unwrap().departed.is_empty());
}

//! The load generator's own fake Nextcloud: accepts every auth (the user id
//! comes from the hello params) and every room join, answers pings.

use axum::body::Bytes;
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde_json::{json, Value};

async fn handle(body: Bytes) -> Json<Value> {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let data = match v["type"].as_str() {
        Some("auth") => {
            let user = v["auth"]["params"]["userid"].as_str().unwrap_or("");
            json!({"type": "auth", "auth": {"version": "1.0", "userid": user, "user": {"displayname": user}}})
        }
        Some("room") => {
            json!({"type": "room", "room": {"version": "1.0", "roomid": v["room"]["roomid"], "properties": {"name": "bench", "type": 2}}})
        }
        Some(other) => json!({"type": other}),
        None => json!({"type": "error", "error": {"code": "invalid", "message": "bad request"}}),
    };
    Json(
        json!({"ocs": {"meta": {"status": "ok", "statuscode": 200, "message": "OK"}, "data": data}}),
    )
}

/// Serves the fake backend on `addr` until the process ends.
pub async fn start(addr: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let app = Router::new().fallback(post(handle));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

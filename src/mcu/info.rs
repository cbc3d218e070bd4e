//! What Janus told about itself when the session was created, and the
//! Janus parts of `/api/v1/serverinfo` (`sfu`) and `/api/v1/stats` (`mcu`)
//! in the Go server's shapes.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::janus::VIDEOROOM;

/// Janus's `info` answer, as far as the server reports it.
#[derive(Debug, Clone)]
pub struct JanusInfo {
    /// The whole `info` answer.
    info: Value,
    /// When the current Janus session was created.
    pub since: SystemTime,
}

impl JanusInfo {
    /// Janus's `info` answer, connected at `since`.
    pub fn new(info: Value, since: SystemTime) -> Self {
        JanusInfo { info, since }
    }

    /// The `info` answer itself.
    pub fn raw(&self) -> &Value {
        &self.info
    }

    fn text(&self, v: &Value, key: &str) -> Option<Value> {
        v.get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| Value::String(s.to_string()))
    }
}

/// The URL without user name or password (they never leave the server).
fn public_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => String::new(),
    }
}

/// `sfu` of `/api/v1/serverinfo`: `{"mode": "janus", "janus": {...}}` with
/// the URL, whether it is connected, and while it is: name, version,
/// author, data channels, full trickle, local IP, IPv6 and the videoroom
/// plugin (as the Go server).
pub fn serverinfo(url: &str, info: Option<&JanusInfo>) -> Value {
    let mut janus = Map::new();
    janus.insert("url".into(), json!(public_url(url)));
    janus.insert("connected".into(), json!(info.is_some()));
    if let Some(i) = info {
        let v = &i.info;
        for (out, key) in [
            ("name", "name"),
            ("version", "version_string"),
            ("author", "author"),
        ] {
            if let Some(t) = i.text(v, key) {
                janus.insert(out.into(), t);
            }
        }
        for (out, key) in [
            ("datachannels", "data_channels"),
            ("fulltrickle", "full-trickle"),
        ] {
            janus.insert(out.into(), json!(v[key].as_bool().unwrap_or(false)));
        }
        if let Some(t) = i.text(v, "local-ip") {
            janus.insert("localip".into(), t);
        }
        janus.insert("ipv6".into(), json!(v["ipv6"].as_bool().unwrap_or(false)));
        if let Some(p) = v["plugins"].get(VIDEOROOM) {
            let mut room = Map::new();
            for (out, key) in [
                ("name", "name"),
                ("version", "version_string"),
                ("author", "author"),
            ] {
                if let Some(t) = i.text(p, key) {
                    room.insert(out.into(), t);
                }
            }
            janus.insert("videoroom".into(), Value::Object(room));
        }
    }
    json!({"mode": "janus", "janus": janus})
}

/// `mcu` of `/api/v1/stats`: URL, connected, publishers, clients
/// (publishers and subscribers) and, while connected, `uptime` (when the
/// Janus session was created, RFC 3339), as the Go server.
pub fn stats(url: &str, info: Option<&JanusInfo>, publishers: usize, clients: usize) -> Value {
    let mut v = json!({
        "url": public_url(url),
        "connected": info.is_some(),
        "publishers": publishers,
        "clients": clients,
    });
    if let Some(i) = info {
        v["uptime"] = json!(rfc3339(i.since));
    }
    v
}

/// `2026-12-06T22:41:59.123Z` (UTC, milliseconds).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        d.subsec_millis()
    )
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's
/// `civil_from_days`, for days on or after the epoch).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_of_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(951_782_400_250);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.250Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_796_597_999);
        assert_eq!(rfc3339(t), "2026-12-06T22:59:59.000Z");
    }

    #[test]
    fn serverinfo_in_the_go_shape_without_credentials() {
        let info = JanusInfo::new(
            json!({"name": "Janus WebRTC Server", "version_string": "1.1.2",
                   "author": "Meetecho s.r.l.", "data_channels": true,
                   "full-trickle": true, "local-ip": "10.0.0.1", "ipv6": false,
                   "plugins": {VIDEOROOM: {"name": "JANUS VideoRoom plugin",
                     "version_string": "0.0.9", "author": "Meetecho s.r.l."}}}),
            UNIX_EPOCH,
        );
        let v = serverinfo("ws://u:p@127.0.0.1:8188", Some(&info));
        assert_eq!(
            v,
            json!({"mode": "janus", "janus": {"url": "ws://127.0.0.1:8188/",
                "connected": true, "name": "Janus WebRTC Server", "version": "1.1.2",
                "author": "Meetecho s.r.l.", "datachannels": true, "fulltrickle": true,
                "localip": "10.0.0.1", "ipv6": false,
                "videoroom": {"name": "JANUS VideoRoom plugin", "version": "0.0.9",
                    "author": "Meetecho s.r.l."}}})
        );
        assert_eq!(
            serverinfo("ws://127.0.0.1:8188", None),
            json!({"mode": "janus", "janus": {"url": "ws://127.0.0.1:8188/", "connected": false}})
        );
        let s = stats("ws://127.0.0.1:8188", Some(&info), 2, 5);
        assert_eq!(s["uptime"], "1970-01-01T00:00:00.000Z");
        assert_eq!(s["clients"], 5);
        assert!(stats("ws://x", None, 0, 0).get("uptime").is_none());
    }
}

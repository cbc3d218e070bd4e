//! etcd's v3 API through its JSON gateway over HTTP(S) (`POST /v3/kv/range`,
//! `POST /v3/watch`, a stream of JSON objects): what the backends need of
//! etcd, on the HTTP client the server already has. Keys and values are
//! base64 in the JSON, 64-bit numbers are strings.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::config::etcd::EtcdConfig;

/// A request to etcd failed.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdError(pub String);

impl std::fmt::Display for EtcdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(e: impl std::fmt::Display) -> EtcdError {
    EtcdError(e.to_string())
}

/// How long a range request (and the creation of a watch) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The Go client's dial timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest JSON object of a watch stream kept while it arrives.
const MAX_MESSAGE: usize = 16 << 20;

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn unb64(s: &str) -> Result<Vec<u8>, EtcdError> {
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .map_err(|e| EtcdError(format!("bad base64 from etcd: {e}")))
}

/// The end of the range of all keys starting with `prefix` (etcd's
/// `GetPrefixRangeEnd`).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum N {
        S(String),
        I(i64),
    }
    match N::deserialize(d)? {
        N::I(i) => Ok(i),
        N::S(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize, Default)]
struct Header {
    #[serde(default, deserialize_with = "int")]
    revision: i64,
}

#[derive(Deserialize)]
struct Kv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
}

#[derive(Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<Kv>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(default, rename = "type")]
    kind: String,
    kv: Option<Kv>,
}

#[derive(Deserialize)]
struct WatchAnswer {
    #[serde(default)]
    created: bool,
    #[serde(default)]
    canceled: bool,
    #[serde(default, deserialize_with = "int")]
    compact_revision: i64,
    #[serde(default)]
    cancel_reason: String,
    #[serde(default)]
    events: Vec<Event>,
}

#[derive(Deserialize)]
struct StreamItem {
    result: Option<WatchAnswer>,
    error: Option<serde_json::Value>,
}

/// The keys under a prefix with their values, at a revision.
pub struct Range {
    /// The revision of the store when it was read.
    pub revision: i64,
    /// Keys and values.
    pub kvs: Vec<(String, Vec<u8>)>,
}

/// A change the watch reported.
#[derive(Debug, PartialEq)]
pub enum Change {
    /// A key was written.
    Put(String, Vec<u8>),
    /// A key was deleted.
    Delete(String),
}

/// The etcd endpoints and the HTTP client that speaks to them.
pub struct Gateway {
    http: reqwest::Client,
    endpoints: Vec<String>,
    /// The endpoint that answered last (tried first).
    active: AtomicUsize,
}

impl Gateway {
    /// A client of `endpoints` (`host:port` or `http(s)://host:port`;
    /// `https` by default when TLS is configured), with the client
    /// certificate and the only CA of `[etcd]` when set.
    pub fn new(cfg: &EtcdConfig, endpoints: &[String]) -> Result<Gateway, EtcdError> {
        let mut b = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = &cfg.tls {
            let read = |p: &std::path::Path| {
                std::fs::read(p).map_err(|e| {
                    EtcdError(format!(
                        "could not setup etcd TLS configuration: {}: {e}",
                        p.display()
                    ))
                })
            };
            let ca = reqwest::Certificate::from_pem(&read(&tls.ca_cert)?)
                .map_err(|e| EtcdError(format!("[etcd] cacert: {e}")))?;
            let mut pem = read(&tls.client_cert)?;
            pem.push(b'\n');
            pem.extend(read(&tls.client_key)?);
            let id = reqwest::Identity::from_pem(&pem)
                .map_err(|e| EtcdError(format!("[etcd] clientcert/clientkey: {e}")))?;
            b = b.tls_certs_only([ca]).identity(id);
        }
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        let endpoints = endpoints
            .iter()
            .map(|e| match e.contains("://") {
                true => e.trim_end_matches('/').to_string(),
                false => format!("{scheme}://{e}"),
            })
            .collect();
        Ok(Gateway {
            http: b.build().map_err(err)?,
            endpoints,
            active: AtomicUsize::new(0),
        })
    }

    /// The endpoints, as URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The endpoint that answered last.
    pub fn active(&self) -> &str {
        let i = self.active.load(Ordering::Relaxed);
        self.endpoints.get(i).map(String::as_str).unwrap_or("")
    }

    /// POSTs `body` to `path` of the first endpoint that answers, starting
    /// with the one that answered last; an error answer of etcd is an error.
    async fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, EtcdError> {
        let n = self.endpoints.len();
        let first = self.active.load(Ordering::Relaxed);
        let mut last = EtcdError("no etcd endpoints".into());
        for i in 0..n {
            let idx = (first + i) % n;
            let url = format!("{}{path}", self.endpoints[idx]);
            let mut req = self
                .http
                .post(&url)
                // etcd's "require leader": a member cut off from the others
                // ends the watch instead of going silent.
                .header("Grpc-Metadata-hasleader", "true")
                .json(body);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    self.active.store(idx, Ordering::Relaxed);
                    return Ok(r);
                }
                Ok(r) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    last = EtcdError(format!(
                        "{} answered {status}: {}",
                        self.endpoints[idx],
                        text.chars().take(200).collect::<String>()
                    ));
                }
                Err(e) => last = EtcdError(format!("{}: {}", self.endpoints[idx], plain(&e))),
            }
            tracing::debug!(error = %last, "etcd: endpoint failed");
        }
        Err(last)
    }

    /// The keys under `prefix` and their values.
    pub async fn range_prefix(&self, prefix: &str) -> Result<Range, EtcdError> {
        let body = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
        });
        let r = self
            .post("/v3/kv/range", &body, Some(REQUEST_TIMEOUT))
            .await?;
        let bytes = r.bytes().await.map_err(|e| err(plain(&e)))?;
        let a: RangeAnswer = serde_json::from_slice(&bytes)
            .map_err(|e| EtcdError(format!("bad range answer from etcd: {e}")))?;
        let kvs = a
            .kvs
            .into_iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(&unb64(&kv.key)?).into_owned();
                Ok((key, unb64(&kv.value)?))
            })
            .collect::<Result<_, EtcdError>>()?;
        Ok(Range {
            revision: a.header.revision,
            kvs,
        })
    }

    /// Watches the keys under `prefix` from revision `start`; returns once
    /// etcd confirmed the watch.
    pub async fn watch_prefix(&self, prefix: &str, start: i64) -> Result<Watch, EtcdError> {
        let body = json!({"create_request": {
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
            "start_revision": start.to_string(),
        }});
        let resp = self.post("/v3/watch", &body, None).await?;
        let mut w = Watch {
            resp,
            buf: Vec::new(),
            pending: Vec::new(),
        };
        let created = tokio::time::timeout(REQUEST_TIMEOUT, w.answer())
            .await
            .map_err(|_| EtcdError("etcd did not confirm the watch".into()))??;
        match created {
            Some(a) if a.created => {
                // A creation answer may already carry events.
                w.pending = changes(a.events)?;
                Ok(w)
            }
            Some(_) => Err(EtcdError("etcd did not confirm the watch".into())),
            None => Err(EtcdError("etcd closed the watch".into())),
        }
    }
}

/// A reqwest error with its causes (reqwest's own text often just says
/// "error sending request").
fn plain(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn changes(events: Vec<Event>) -> Result<Vec<Change>, EtcdError> {
    let mut out = Vec::with_capacity(events.len());
    for ev in events {
        let Some(kv) = ev.kv else { continue };
        let key = String::from_utf8_lossy(&unb64(&kv.key)?).into_owned();
        out.push(match ev.kind.as_str() {
            "DELETE" => Change::Delete(key),
            _ => Change::Put(key, unb64(&kv.value)?),
        });
    }
    Ok(out)
}

/// A watch: its changes in order.
pub struct Watch {
    resp: reqwest::Response,
    buf: Vec<u8>,
    pending: Vec<Change>,
}

impl Watch {
    /// The next batch of changes; Ok(None) when etcd ended the stream, an
    /// error when etcd cancelled the watch (e.g. its revision was
    /// compacted).
    pub async fn next(&mut self) -> Result<Option<Vec<Change>>, EtcdError> {
        if !self.pending.is_empty() {
            return Ok(Some(std::mem::take(&mut self.pending)));
        }
        loop {
            let Some(a) = self.answer().await? else {
                return Ok(None);
            };
            if a.canceled {
                return Err(EtcdError(match a.compact_revision {
                    0 => format!("etcd cancelled the watch: {}", a.cancel_reason),
                    r => format!("etcd compacted the revisions up to {r}"),
                }));
            }
            if !a.events.is_empty() {
                return Ok(Some(changes(a.events)?));
            }
        }
    }

    /// The next object of the stream.
    async fn answer(&mut self) -> Result<Option<WatchAnswer>, EtcdError> {
        loop {
            let start = self
                .buf
                .iter()
                .position(|b| !b.is_ascii_whitespace())
                .unwrap_or(self.buf.len());
            self.buf.drain(..start);
            if !self.buf.is_empty() {
                let mut it =
                    serde_json::Deserializer::from_slice(&self.buf).into_iter::<StreamItem>();
                match it.next() {
                    Some(Ok(item)) => {
                        let used = it.byte_offset();
                        self.buf.drain(..used);
                        if let Some(e) = item.error {
                            return Err(EtcdError(format!("etcd: {e}")));
                        }
                        if let Some(a) = item.result {
                            return Ok(Some(a));
                        }
                        continue;
                    }
                    Some(Err(e)) if !e.is_eof() => {
                        return Err(EtcdError(format!("bad watch answer from etcd: {e}")))
                    }
                    _ => {}
                }
            }
            if self.buf.len() > MAX_MESSAGE {
                return Err(EtcdError("a watch answer of etcd is too large".into()));
            }
            match self.resp.chunk().await.map_err(|e| err(plain(&e)))? {
                Some(c) => self.buf.extend_from_slice(&c),
                None => return Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"/a/b"), b"/a/c");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
    }

    #[test]
    fn gateway_numbers_are_strings_or_numbers() {
        let a: WatchAnswer = serde_json::from_str(
            r#"{"header":{"revision":"12"},"compact_revision":3,"events":[{"type":"DELETE","kv":{"key":"L2E="}},{"kv":{"key":"L2I=","value":"e30="}}]}"#,
        )
        .unwrap();
        assert_eq!(a.compact_revision, 3);
        assert_eq!(
            changes(a.events).unwrap(),
            vec![
                Change::Delete("/a".into()),
                Change::Put("/b".into(), b"{}".to_vec())
            ]
        );
    }
}

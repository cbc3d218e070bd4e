//! `[https]`: the server's own TLS listener, its certificate re-read on
//! SIGHUP while open sessions stay.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::support::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::json;

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl command");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and a certificate for localhost/127.0.0.1 signed by it, named
/// `<name>-ca.pem`, `<name>.pem`, `<name>.key` (good for a server and,
/// signed by the same CA, for a client).
pub(crate) fn make_cert(dir: &Path, name: &str) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    let mut args = vec!["req", "-x509", "-nodes", "-days", "2"];
    args.extend(ec);
    args.extend(["-keyout", &ca_key, "-out", &ca]);
    let ca_subject = format!("/CN=test CA {name}");
    args.extend(["-subj", &ca_subject]);
    openssl(dir, &args);
    let key = format!("{name}.key");
    let csr = format!("{name}.csr");
    let mut args = vec!["req", "-new", "-nodes"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", "/CN=localhost"]);
    openssl(dir, &args);
    let ext = format!("{name}.ext");
    std::fs::write(
        dir.join(&ext),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
    .unwrap();
    let cert = format!("{name}.pem");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &ca,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            &cert,
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}

fn der(path: &Path) -> CertificateDer<'static> {
    CertificateDer::from_pem_file(path).unwrap()
}

/// A TLS client trusting the given CA files.
fn connector(cas: &[PathBuf]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(der(ca)).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects over TLS; returns the stream and the certificate the server
/// presented.
async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
) -> (
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    CertificateDer<'static>,
) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    (tls, cert)
}

/// A WebSocket client over TLS (welcome consumed, hello done as `user`).
async fn wss_client(
    connector: &tokio_rustls::TlsConnector,
    port: u16,
    nc: &FakeNextcloud,
    user: &str,
) -> (Client, CertificateDer<'static>) {
    let (tls, cert) = tls_connect(connector, port).await;
    let url = format!("wss://localhost:{port}/spreed");
    let mut c = Client::over(url, tokio_tungstenite::MaybeTlsStream::Rustls(tls)).await;
    c.hello_v1(&nc.backend_url(), json!({"userid": user})).await;
    (c, cert)
}

#[tokio::test]
async fn wss_works_and_sighup_swaps_the_certificate_for_new_connections_only() {
    let dir = fresh_dir("spreed-tls");
    make_cert(&dir, "one");
    make_cert(&dir, "two");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::copy(dir.join("one.pem"), &cert).unwrap();
    std::fs::copy(dir.join("one.key"), &key).unwrap();
    let nc = FakeNextcloud::start().await;
    let port = free_port();
    // Only [https]: no HTTP listener.
    let config = config_text(&nc, "").replace(
        "[http]\nlisten = 127.0.0.1:0\n",
        &format!(
            "[https]\nlisten = 127.0.0.1:{port}\ncertificate = {}\nkey = {}\n",
            cert.display(),
            key.display()
        ),
    );
    let config_path = dir.join("server.conf");
    std::fs::write(&config_path, config).unwrap();
    let server = LoggedProcess::spawn(&["--config", config_path.to_str().unwrap()]);
    wait_listening(port).await;

    let tls = connector(&[dir.join("one-ca.pem"), dir.join("two-ca.pem")]);
    let (mut alice, seen) = wss_client(&tls, port, &nc, "alice").await;
    assert_eq!(seen, der(&dir.join("one.pem")));
    // A client that trusts only the second CA is refused for now.
    let only_two = connector(&[dir.join("two-ca.pem")]);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    assert!(only_two
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .is_err());

    // New files, SIGHUP.
    std::fs::copy(dir.join("two.pem"), &cert).unwrap();
    std::fs::copy(dir.join("two.key"), &key).unwrap();
    let skip = server.lines().len();
    server.signal("-HUP");
    server
        .wait_line(skip, |l| l.contains("certificate reloaded"))
        .await;
    let (mut bob, seen) = wss_client(&only_two, port, &nc, "bob").await;
    assert_eq!(seen, der(&dir.join("two.pem")));

    // The session opened with the old certificate is untouched.
    alice
        .message_to(
            json!({"type": "session", "sessionid": bob.session_id}),
            json!({"hi": "bob"}),
        )
        .await;
    let m = bob.expect_type("message").await;
    assert_eq!(m["message"]["data"]["hi"], "bob");
    bob.message_to(
        json!({"type": "session", "sessionid": alice.session_id}),
        json!({"hi": "alice"}),
    )
    .await;
    let m = alice.expect_type("message").await;
    assert_eq!(m["message"]["data"]["hi"], "alice");

    // A broken certificate file on reload keeps the running one.
    std::fs::write(&cert, "not a certificate").unwrap();
    let skip = server.lines().len();
    server.signal("-HUP");
    let l = server
        .wait_line(skip, |l| l.contains("[https] certificate"))
        .await;
    assert!(l.contains("keeping the running certificate"), "{l}");
    let (_, seen) = tls_connect(&only_two, port).await;
    assert_eq!(seen, der(&dir.join("two.pem")));
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn several_http_and_https_addresses_serve_one_hub() {
    use tokio::io::AsyncReadExt;
    let dir = fresh_dir("spreed-tls-both");
    make_cert(&dir, "one");
    let nc = FakeNextcloud::start().await;
    let (p1, p2, p3) = (free_port(), free_port(), free_port());
    let config = config_text(&nc, "").replace(
        "[http]\nlisten = 127.0.0.1:0\n",
        &format!(
            "[http]\nlisten = 127.0.0.1:{p1} 127.0.0.1:{p2}\n\
             [https]\nlisten = 127.0.0.1:{p3}\ncertificate = {}\nkey = {}\nreadtimeout = 1\n",
            dir.join("one.pem").display(),
            dir.join("one.key").display()
        ),
    );
    let config_path = dir.join("server.conf");
    std::fs::write(&config_path, config).unwrap();
    let server = LoggedProcess::spawn(&["--config", config_path.to_str().unwrap()]);
    for p in [p1, p2, p3] {
        wait_listening(p).await;
    }
    let hello = |port: u16, user: &'static str| {
        let nc = nc.clone();
        async move {
            let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/spreed")).await;
            c.expect_type("welcome").await;
            c.hello_v1(&nc.backend_url(), json!({"userid": user})).await;
            c
        }
    };
    let mut alice = hello(p1, "alice").await;
    let mut bob = hello(p2, "bob").await;
    let (mut carol, _) = wss_client(&connector(&[dir.join("one-ca.pem")]), p3, &nc, "carol").await;
    alice
        .message_to(
            json!({"type": "session", "sessionid": carol.session_id}),
            json!({"n": 1}),
        )
        .await;
    assert_eq!(
        carol.expect_type("message").await["message"]["data"]["n"],
        1
    );
    carol
        .message_to(
            json!({"type": "session", "sessionid": bob.session_id}),
            json!({"n": 2}),
        )
        .await;
    assert_eq!(bob.expect_type("message").await["message"]["data"]["n"], 2);
    // A connection that never starts the TLS handshake is closed after
    // [https] readtimeout.
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", p3))
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, idle.read(&mut buf))
        .await
        .expect("the idle TLS connection was not closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

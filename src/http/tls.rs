//! The `[https]` listener's TLS: certificate chain and key read from PEM
//! files, swapped on SIGHUP without touching open connections (each new
//! connection takes the configuration current at its accept).

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::HttpsConfig;

/// A certificate or key that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(pub String);

/// Reads `certificate` and `key` into a server configuration (HTTP/1.1
/// only, aws-lc-rs, TLS 1.2 and 1.3).
pub fn load(certificate: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certificate)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            TlsError(format!(
                "[https] certificate: cannot read {}: {e}",
                certificate.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "[https] certificate: no certificate in {}",
            certificate.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        TlsError(format!(
            "[https] key: cannot read a private key from {}: {e}",
            key.display()
        ))
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("[https]: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            TlsError(format!(
                "[https] key: does not fit the certificate or is not supported: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration of the running `[https]` listener.
pub struct Tls {
    current: ArcSwap<rustls::ServerConfig>,
}

impl Tls {
    /// Loads the certificate and key named in `[https]`.
    pub fn new(config: &HttpsConfig) -> Result<Tls, TlsError> {
        Ok(Tls {
            current: ArcSwap::new(load(&config.certificate, &config.key)?),
        })
    }

    /// Re-reads the files (SIGHUP). On error the running certificate stays.
    pub fn reload(&self, config: &HttpsConfig) -> Result<(), TlsError> {
        self.current.store(load(&config.certificate, &config.key)?);
        Ok(())
    }

    /// An acceptor with the configuration current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }
}

//! TLS 1.3 with mutual authentication, for QUIC.
//!
//! The server requires a client certificate chaining to the configured
//! terminal CA (rustls' WebPKI verifier also refuses expired ones); the
//! terminal's medical institution code is the certificate's subject common
//! name. Only the `ring` provider is built in.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::model::InstitutionCode;
use crate::protocol::ALPN;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        return Err(anyhow!("no certificate in {}", path.display()));
    }
    Ok(certs)
}

/// Reads a PEM private key.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("reading private key {}", path.display()))
}

fn roots(ca: &Path) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots
            .add(cert)
            .with_context(|| format!("CA certificate in {}", ca.display()))?;
    }
    Ok(roots)
}

/// Transport limits of a server.
#[derive(Debug, Clone, Copy)]
pub struct Transport {
    /// Concurrent request streams per connection.
    pub max_streams: u32,
    /// Idle time after which a connection is closed.
    pub idle_timeout: Duration,
}

impl Default for Transport {
    fn default() -> Transport {
        Transport {
            max_streams: 64,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// A QUIC server configuration: TLS 1.3, ALPN `qualcache/1`, client
/// certificates required and verified against `client_ca`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: &Path,
    transport: Transport,
) -> Result<quinn::ServerConfig> {
    let provider = provider();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots(client_ca)?),
        provider.clone(),
    )
    .build()
    .context("building the client certificate verifier")?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .with_context(|| {
            format!(
                "server certificate {} and key {}",
                cert.display(),
                key.display()
            )
        })?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(transport.max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.max_idle_timeout(Some(transport.idle_timeout.try_into()?));
    config.transport_config(Arc::new(t));
    Ok(config)
}

/// A QUIC client configuration trusting `ca` and presenting `cert`/`key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<quinn::ClientConfig> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
        .context("client certificate and key")?;
    client_from(tls)
}

/// A client configuration with no client certificate (the server must
/// refuse it; used by tests and diagnostics).
pub fn client_config_anonymous(ca: &Path) -> Result<quinn::ClientConfig> {
    let tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca)?)
        .with_no_client_auth();
    client_from(tls)
}

/// How often a client pings an otherwise idle connection, so that a
/// terminal between patients keeps its connection (the server closes one
/// idle for `idle_timeout_secs`, 60 s by default, and quinn's own default
/// is 30 s).
pub const CLIENT_KEEP_ALIVE: Duration = Duration::from_secs(15);

fn client_from(mut tls: rustls::ClientConfig) -> Result<quinn::ClientConfig> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(CLIENT_KEEP_ALIVE));
    transport.max_idle_timeout(Some(Transport::default().idle_timeout.try_into()?));
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// The institution code of a connection's client certificate (its subject
/// common name), if it has a valid one.
pub fn institution_code(conn: &quinn::Connection) -> Option<InstitutionCode> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast_ref::<Vec<CertificateDer<'static>>>()?;
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    cn.parse().ok()
}

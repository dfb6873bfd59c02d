//! TLS (rustls, ring provider) from PEM files: to clients, and to computes (`--backend-tls`).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};

/// Builds the server TLS configuration from a certificate chain and a private key in PEM.
pub fn server_config(
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    Ok(reloadable_server_config(cert_path, key_path)?.0)
}

/// As [`server_config`], with the handle that swaps in a renewed certificate and key (SIGHUP)
/// without a restart: connections already open keep theirs, new ones get the new pair.
pub fn reloadable_server_config(
    cert_path: &Path,
    key_path: &Path,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<ReloadableCert>)> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let resolver = Arc::new(ReloadableCert {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        current: std::sync::RwLock::new(load_certified_key(cert_path, key_path, &provider)?),
        provider: Arc::clone(&provider),
    });
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn rustls::server::ResolvesServerCert>);
    Ok((Arc::new(config), resolver))
}

/// The proxy's certificate and key, replaceable while it runs.
#[derive(Debug)]
pub struct ReloadableCert {
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ReloadableCert {
    /// Reads the certificate and key files again. A pair that does not load (a half-written
    /// renewal, a key that does not match) leaves the current one in place, and says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load_certified_key(&self.cert_path, &self.key_path, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for ReloadableCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|p| p.into_inner()),
        ))
    }
}

fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> anyhow::Result<Arc<rustls::sign::CertifiedKey>> {
    let cert_pem = std::fs::read(cert_path)
        .with_context(|| format!("reading --tls-cert {}", cert_path.display()))?;
    let key_pem = std::fs::read(key_path)
        .with_context(|| format!("reading --tls-key {}", key_path.display()))?;
    // PEM through rustls-pki-types (rustls-pemfile is unmaintained: RUSTSEC-2025-0134).
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", cert_path.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .with_context(|| format!("no usable private key in {}", key_path.display()))?;
    let certified = rustls::sign::CertifiedKey::from_der(certs, key, provider)
        .context("the TLS certificate and key do not match or are unsupported")?;
    Ok(Arc::new(certified))
}

/// TLS on the backend leg: the compute's certificate must chain to the CA and name
/// `server_name`. Computes get new IPs at every wake, so the name is a fixed one that the
/// computes' certificate carries (`--backend-tls-name`), not the address.
#[derive(Clone)]
pub struct BackendTls {
    pub connector: tokio_rustls::TlsConnector,
    pub server_name: rustls::pki_types::ServerName<'static>,
}

impl std::fmt::Debug for BackendTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// Builds the backend leg's TLS from a PEM CA bundle and the name computes' certificates carry.
pub fn backend_config(ca_path: &Path, server_name: &str) -> anyhow::Result<BackendTls> {
    let ca_pem = std::fs::read(ca_path)
        .with_context(|| format!("reading --backend-ca {}", ca_path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca_pem) {
        let cert =
            cert.with_context(|| format!("parsing certificates in {}", ca_path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("a CA certificate in {} is unusable", ca_path.display()))?;
    }
    if roots.is_empty() {
        bail!("no CA certificate found in {}", ca_path.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let server_name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .with_context(|| {
            format!("--backend-tls-name '{server_name}' is not a DNS name or IP address")
        })?;
    Ok(BackendTls {
        connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        server_name,
    })
}

//! TLS to `https` instances.
//!
//! An instance's certificate is verified against the system's trust store (found the way
//! OpenSSL finds it: `SSL_CERT_FILE`, `SSL_CERT_DIR`, or the distribution's bundle) and
//! the CA certificates named by configuration, for services whose certificates come from
//! an internal CA. The name checked is the instance's registered address, a DNS name or
//! an IP address, against the certificate's subject alternative names. HTTP/2 and
//! HTTP/1.1 are both offered (ALPN); the instance picks.

use rustls::RootCertStore;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// The client side of TLS to instances: the system's roots and those in `extra_ca_file`
/// (PEM, one or more certificates). A CA file that cannot be read, holds no certificate or
/// holds one that is not a usable trust anchor is an error, so that a typo fails the start
/// rather than every request.
pub fn client_config(extra_ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = RootCertStore::empty();
    let (system, _) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(path) = extra_ca_file {
        let shown = path.display();
        let pem = std::fs::read(path).map_err(|error| format!("reading the upstream CA file {shown}: {error}"))?;
        let mut added = 0;
        for certificate in CertificateDer::pem_slice_iter(&pem) {
            let certificate =
                certificate.map_err(|error| format!("the upstream CA file {shown} is not valid PEM: {error}"))?;
            roots
                .add(certificate)
                .map_err(|error| format!("the upstream CA file {shown} holds an unusable certificate: {error}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("the upstream CA file {shown} holds no certificate"));
        }
        tracing::info!(file = %shown, certificates = added, "trusting the configured CAs for https instances");
    }
    if roots.is_empty() {
        tracing::warn!("no trusted CA certificates found: https instances cannot be verified and will fail");
    } else {
        tracing::debug!(system, total = roots.len(), "CA certificates trusted for https instances");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS versions: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The system's CA certificates, read once per process (each gateway started in it shares
/// them). Unreadable entries are skipped, with a warning.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "a system CA certificate could not be read");
        }
        found.certs
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporary(name: &str, contents: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("pake-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn a_bad_ca_file_is_refused_with_its_reason() {
        let missing = std::env::temp_dir().join("pake-tls-no-such-file.pem");
        let error = client_config(Some(&missing)).unwrap_err();
        assert!(error.contains("reading the upstream CA file") && error.contains("no-such-file"), "{error}");

        let empty = temporary("empty.pem", b"just text, no PEM block\n");
        let error = client_config(Some(&empty)).unwrap_err();
        assert!(error.contains("holds no certificate"), "{error}");

        let garbage = temporary("garbage.pem", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        let error = client_config(Some(&garbage)).unwrap_err();
        assert!(error.contains("unusable certificate"), "{error}");
        for path in [empty, garbage] {
            let _ = std::fs::remove_file(path);
        }
    }

    #[test]
    fn without_a_ca_file_the_system_roots_are_trusted() {
        let config = client_config(None).unwrap();
        assert!(config.alpn_protocols.is_empty(), "ALPN is the connector's to set");
        // This machine has a CA bundle; a config without roots would verify nothing.
        assert!(!system_roots().is_empty(), "no system CA certificates were found");
    }
}

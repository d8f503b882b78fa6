//! TLS for the streaming server: the configured certificate and key, or a self-signed pair
//! made at start. HTTP/1.1 only (upgrades do not exist in HTTP/2).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use super::StreamingError;

fn err(msg: String) -> StreamingError {
    StreamingError::Tls(msg)
}

/// The acceptor for `cert` and `key` (PEM files), or for a new self-signed pair when both are
/// empty.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, StreamingError> {
    let (chain, key) = if cert.as_os_str().is_empty() {
        self_signed()?
    } else {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| err(format!("reading certificates from {}: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(err(format!("{} holds no certificate", cert.display())));
        }
        let key =
            PrivateKeyDer::from_pem_file(key).map_err(|e| err(format!("reading the key {}: {e}", key.display())))?;
        (chain, key)
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| err(format!("certificate and key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn self_signed() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), StreamingError> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(names).map_err(|e| err(format!("making a self-signed certificate: {e}")))?;
    let key = PrivateKeyDer::try_from(signing_key.serialize_der()).map_err(|e| err(e.to_string()))?;
    Ok((vec![cert.der().clone()], key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_is_made_and_files_are_read() {
        acceptor(Path::new(""), Path::new("")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(vec!["x".into()]).unwrap();
        std::fs::write(dir.path().join("c.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("k.pem"), signing_key.serialize_pem()).unwrap();
        acceptor(&dir.path().join("c.pem"), &dir.path().join("k.pem")).unwrap();
        assert!(acceptor(&dir.path().join("k.pem"), &dir.path().join("k.pem")).is_err());
        assert!(acceptor(&dir.path().join("nosuch"), &dir.path().join("k.pem")).is_err());
    }
}

//! TLS to the study database, as libpq's `sslmode` and `sslrootcert` define it, on rustls (pure Rust, ring):
//! - `disable`: plain TCP;
//! - `prefer` (the default, as in libpq): TLS when the server offers it, without checking its certificate;
//! - `require`: TLS or no connection; the certificate is checked against the root certificate when there is one
//!   (`sslrootcert`, else `~/.postgresql/root.crt`), as libpq does;
//! - `verify-ca`: TLS, the certificate must chain to the root certificate;
//! - `verify-full`: as `verify-ca`, and the certificate must name the host.
//!
//! `allow` (plain first, TLS on refusal) is refused rather than quietly treated as another mode.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use postgres::config::SslMode;
use postgres::{Client, Config, NoTls};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How the connection is secured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TlsMode {
    Disable,
    Prefer,
    Require { root: Option<PathBuf> },
    VerifyCa { root: PathBuf },
    VerifyFull { root: PathBuf },
}

/// Why a connection failed.
pub(crate) enum ConnectFailure {
    /// The TLS settings are wrong (a missing or unreadable root certificate).
    Settings(String),
    Server(postgres::Error),
}

/// libpq's default root certificate.
fn default_root() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| Path::new(&home).join(".postgresql/root.crt"))
}

impl TlsMode {
    /// Takes `sslmode` and `sslrootcert` out of a `postgres://` URL's query: returns the URL without them (for the
    /// client's own parser, which knows fewer modes) and the mode. A URL in `key=value` form is returned as it is,
    /// with the client's own reading of its `sslmode`.
    pub(crate) fn split_from(url: &str) -> Result<(String, TlsMode), String> {
        let Some((head, query)) = url.split_once('?').filter(|_| url.contains("://")) else {
            return Ok((url.to_string(), TlsMode::Prefer));
        };
        let (mut mode, mut root) = (None, None);
        let mut kept = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("sslmode", value)) => mode = Some(value.to_string()),
                // Decoded as tokio-postgres decodes the rest of the URL (an invalid escape is kept as written).
                Some(("sslrootcert", value)) => {
                    let path = percent_encoding::percent_decode_str(value)
                        .decode_utf8()
                        .map_err(|_| format!("sslrootcert={value}: not UTF-8 once decoded"))?;
                    root = Some(PathBuf::from(path.as_ref()))
                }
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() { head.to_string() } else { format!("{head}?{}", kept.join("&")) };
        let root_or_default = || root.clone().or_else(|| default_root().filter(|p| p.is_file()));
        let needs_root = |name: &str| {
            root_or_default().ok_or_else(|| {
                format!("sslmode={name} needs a root certificate: give sslrootcert=FILE, or put it at ~/.postgresql/root.crt")
            })
        };
        let mode = match mode.as_deref() {
            None | Some("prefer") => TlsMode::Prefer,
            Some("disable") => TlsMode::Disable,
            Some("require") => TlsMode::Require { root: root_or_default() },
            Some("verify-ca") => TlsMode::VerifyCa { root: needs_root("verify-ca")? },
            Some("verify-full") => TlsMode::VerifyFull { root: needs_root("verify-full")? },
            Some("allow") => {
                return Err("sslmode=allow is not supported; use prefer (TLS when the server offers it), require, \
                            verify-ca or verify-full"
                    .into())
            }
            Some(other) => {
                return Err(format!("sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"))
            }
        };
        Ok((rebuilt, mode))
    }

    /// Connects with `config` in this mode.
    pub(crate) fn connect(&self, config: &Config) -> Result<Client, ConnectFailure> {
        let mut config = config.clone();
        let verifier: Arc<dyn ServerCertVerifier> = match self {
            TlsMode::Disable => {
                config.ssl_mode(SslMode::Disable);
                return config.connect(NoTls).map_err(ConnectFailure::Server);
            }
            TlsMode::Prefer => {
                config.ssl_mode(SslMode::Prefer);
                Arc::new(AnyCertificate(provider()))
            }
            TlsMode::Require { root: None } => {
                config.ssl_mode(SslMode::Require);
                Arc::new(AnyCertificate(provider()))
            }
            TlsMode::Require { root: Some(root) } | TlsMode::VerifyCa { root } => {
                config.ssl_mode(SslMode::Require);
                Arc::new(ChainOnly(webpki(root)?))
            }
            TlsMode::VerifyFull { root } => {
                config.ssl_mode(SslMode::Require);
                webpki(root)?
            }
        };
        let tls = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectFailure::Settings(format!("TLS: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        config.connect(MakeRustlsConnect::new(tls)).map_err(ConnectFailure::Server)
    }
}

/// ring's provider. rustls 0.23.48 deprecates it for lacking post-quantum key exchange; its alternative, aws-lc-rs,
/// needs CMake and a C toolchain for AWS-LC at build time, and classical key exchange is what PostgreSQL's own
/// OpenSSL offers today.
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A verifier of the chain and the host name against the root certificates in `path` (PEM).
fn webpki(path: &Path) -> Result<Arc<WebPkiServerVerifier>, ConnectFailure> {
    let fail = |reason: String| ConnectFailure::Settings(format!("sslrootcert {}: {reason}", path.display()));
    let mut roots = RootCertStore::empty();
    let certificates = CertificateDer::pem_file_iter(path).map_err(|e| fail(e.to_string()))?;
    for certificate in certificates {
        roots.add(certificate.map_err(|e| fail(e.to_string()))?).map_err(|e| fail(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(fail("no certificate in the file".into()));
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().map_err(|e| fail(e.to_string()))
}

/// `prefer` and `require` without a root certificate: encrypted, the server's certificate unchecked (libpq's
/// behaviour); the handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

/// `verify-ca`: the chain is checked, the host name is not.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_taken_out_of_the_url_and_read_as_libpq_reads_them() {
        let split = |url: &str| TlsMode::split_from(url);
        assert_eq!(split("postgres://u@h/db").unwrap(), ("postgres://u@h/db".into(), TlsMode::Prefer));
        assert_eq!(
            split("postgres://u@h/db?sslmode=disable&connect_timeout=3").unwrap(),
            ("postgres://u@h/db?connect_timeout=3".into(), TlsMode::Disable)
        );
        assert_eq!(
            split("postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem").unwrap(),
            ("postgres://u@h/db".into(), TlsMode::VerifyFull { root: "/tmp/ca.pem".into() })
        );
        assert_eq!(
            split("postgres://u@h/db?sslrootcert=/c.pem&sslmode=require").unwrap().1,
            TlsMode::Require { root: Some("/c.pem".into()) }
        );
        let refused = split("postgres://u@h/db?sslmode=allow").unwrap_err();
        assert!(refused.contains("allow is not supported"), "{refused}");
        assert!(split("postgres://u@h/db?sslmode=verify").unwrap_err().contains("not one of"));
    }
}

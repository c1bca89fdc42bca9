//! TLS for SMTP (STARTTLS, RFC 3207), both directions, with rustls (ring
//! provider): the server's certificate and key from PEM files, the client's
//! opportunistic configuration, and one stream type that is either plain
//! TCP or TLS over it, so that session drivers read and write the same way
//! before and after the upgrade.
//!
//! Place in the pipeline: under the session drivers. Ingress upgrades an
//! inbound connection when the SMTP machine says STARTTLS was accepted;
//! outbound delivery upgrades when the client machine says the server
//! answered 220 to STARTTLS.
//!
//! Outbound TLS is opportunistic (`delivery.tls = "may"`) or mandatory
//! (`"encrypt"`), as Postfix's security levels of the same names: the
//! connection is encrypted, the server's certificate is not verified (an
//! MX host name from DNS without DNSSEC proves nothing). It authenticates
//! the server with `"verify"` and MTA-STS (`verifying_config`: WebPKI
//! roots and the host name) and with DANE (`dane`: TLSA records);
//! `crate::deliver::security` chooses which (docs/tls.md).

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

pub mod dane;

/// The system's roots, as Debian's ca-certificates writes them.
pub const SYSTEM_ROOTS_PATH: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Most roots read from one file.
pub const ROOT_COUNT_MAX: usize = 4096;

/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// A connection before or after STARTTLS.
pub enum Stream {
    Plain(TcpStream),
    /// A local socket (LMTP to a store on this host); never upgraded.
    Unix(glommio::net::UnixStream),
    Server(Box<futures_rustls::server::TlsStream<TcpStream>>),
    Client(Box<futures_rustls::client::TlsStream<TcpStream>>),
    /// What is left after a failed upgrade: every operation fails.
    Detached,
}

// TLS state is boxed: a plain session's stream is its socket and a tag.
const _: () = assert!(std::mem::size_of::<Stream>() <= std::mem::size_of::<TcpStream>() + 8);

impl Stream {
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Server(_) | Stream::Client(_))
    }

    /// "TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384", for Received headers
    /// and logs; None before the upgrade.
    pub fn describe(&self) -> Option<String> {
        let common = match self {
            Stream::Plain(_) | Stream::Unix(_) | Stream::Detached => return None,
            Stream::Server(s) => s.get_ref().1 as &rustls::CommonState,
            Stream::Client(s) => s.get_ref().1 as &rustls::CommonState,
        };
        let version = common.protocol_version().map(|v| format!("{v:?}")).unwrap_or_default();
        let version = version.replace("TLSv1_", "TLSv1.");
        let cipher = common.negotiated_cipher_suite().map(|c| format!("{:?}", c.suite())).unwrap_or_default();
        Some(format!("{version} with cipher {cipher}"))
    }

    /// Upgrades an inbound plain connection in place: the server side of
    /// the handshake, within `HANDSHAKE_TIMEOUT`. On failure the stream is
    /// `Detached`.
    pub async fn accept(&mut self, config: Arc<ServerConfig>) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Detached) else {
            return Err(io::Error::other("TLS already active"));
        };
        let acceptor = futures_rustls::TlsAcceptor::from(config);
        // Boxed: the handshake's state (about 3 KiB) lives on the heap for
        // the handshake only, not in every session future that can upgrade.
        let tls = Box::pin(glommio::timer::timeout(HANDSHAKE_TIMEOUT, async { Ok(acceptor.accept(tcp).await) }))
            .await
            .map_err(io::Error::from)??;
        *self = Stream::Server(Box::new(tls));
        Ok(())
    }

    /// Upgrades an outbound plain connection in place: the client side of
    /// the handshake, within `HANDSHAKE_TIMEOUT`. `host` is sent as SNI
    /// when it is a name. On failure the stream is `Detached`.
    pub async fn connect(&mut self, config: Arc<ClientConfig>, host: &str) -> io::Result<()> {
        let Stream::Plain(tcp) = std::mem::replace(self, Stream::Detached) else {
            return Err(io::Error::other("TLS already active"));
        };
        let name = ServerName::try_from(host.trim_end_matches('.').to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("server name {host:?}: {e}")))?;
        let connector = futures_rustls::TlsConnector::from(config);
        // Boxed, as in `accept`.
        let tls =
            Box::pin(glommio::timer::timeout(HANDSHAKE_TIMEOUT, async { Ok(connector.connect(name, tcp).await) }))
                .await
                .map_err(io::Error::from)??;
        *self = Stream::Client(Box::new(tls));
        Ok(())
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_close(cx),
            Stream::Unix(s) => Pin::new(s).poll_close(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_close(cx),
            Stream::Detached => Poll::Ready(Ok(())),
        }
    }
}

/// The server configuration from a PEM certificate chain and a PEM private
/// key (PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert_path: &Path, key_path: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in the file", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| format!("{}: {e}", key_path.display()))?;
    let config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("{} and {}: {e}", cert_path.display(), key_path.display()))?;
    Ok(Arc::new(config))
}

/// The outbound configuration: any server certificate is accepted (see
/// the module's documentation); signatures are still checked, so the
/// handshake is a real one.
pub fn client_config() -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Unverified { provider: provider.clone() });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Trusted roots from a PEM file (`SYSTEM_ROOTS_PATH` when `path` is
/// `None`): every certificate in it that can serve as a trust anchor (a
/// system bundle may hold one that cannot), at least one.
pub fn load_roots(path: Option<&Path>) -> Result<Arc<RootCertStore>, String> {
    let path = path.unwrap_or(Path::new(SYSTEM_ROOTS_PATH));
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))? {
        if certs.len() == ROOT_COUNT_MAX {
            return Err(format!("{}: more than {ROOT_COUNT_MAX} certificates", path.display()));
        }
        certs.push(cert.map_err(|e| format!("{}: {e}", path.display()))?);
    }
    let mut roots = RootCertStore::empty();
    let (added, _unusable) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{}: no usable certificate in the file", path.display()));
    }
    Ok(Arc::new(roots))
}

/// The outbound configuration that authenticates: the certificate chains
/// to one of `roots`, is valid now and names the host (the name given to
/// `Stream::connect`).
pub fn verifying_config(roots: Arc<RootCertStore>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// The outbound configuration of one DANE connection: the certificate
/// chain must match one of `records` (usable, at least one).
pub fn dane_config(records: Vec<dane::Tlsa>) -> Arc<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(dane::DaneVerifier::new(records, provider.clone()));
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("the ring provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Arc::new(config)
}

/// Accepts the server's certificate whatever it is (opportunistic TLS).
#[derive(Debug)]
struct Unverified {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Unverified {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_load_from_the_system_bundle_and_refuse_an_empty_file() {
        if Path::new(SYSTEM_ROOTS_PATH).exists() {
            let roots = load_roots(None).expect("the system's roots load");
            assert!(roots.len() > 10, "{} roots", roots.len());
        }
        let empty = std::env::temp_dir().join(format!("ringpost-empty-roots-{}.pem", std::process::id()));
        std::fs::write(&empty, b"no certificates here\n").unwrap();
        assert!(load_roots(Some(&empty)).unwrap_err().contains("no usable certificate"));
        let _ = std::fs::remove_file(&empty);
        assert!(load_roots(Some(Path::new("/nonexistent/roots.pem"))).is_err());
    }

    /// Upgrading adds little to the future of a session that can upgrade:
    /// the handshake's state is boxed.
    #[test]
    fn upgrade_futures_are_small() {
        const UPGRADE_FUTURE_BYTES_MAX: usize = 128;
        fn accept(stream: &mut Stream, config: Arc<ServerConfig>) -> impl std::future::Future + '_ {
            stream.accept(config)
        }
        fn connect<'a>(
            stream: &'a mut Stream,
            config: Arc<ClientConfig>,
            host: &'a str,
        ) -> impl std::future::Future + 'a {
            stream.connect(config, host)
        }
        fn bytes2<'a, A, F>(_: fn(&'a mut Stream, A) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        fn bytes3<'a, A, F>(_: fn(&'a mut Stream, A, &'a str) -> F) -> usize {
            std::mem::size_of::<F>()
        }
        let (accept_bytes, connect_bytes) = (bytes2(accept), bytes3(connect));
        assert!(accept_bytes <= UPGRADE_FUTURE_BYTES_MAX, "accept future: {accept_bytes} bytes");
        assert!(connect_bytes <= UPGRADE_FUTURE_BYTES_MAX, "connect future: {connect_bytes} bytes");
    }
}

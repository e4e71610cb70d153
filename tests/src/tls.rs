//! TLS for test services: a CA and a server certificate made at test time
//! (rcgen), and a TLS front (rustls) on 127.0.0.1 that terminates TLS and
//! forwards the plain stream to a service that cannot do TLS itself.

use std::{
    net::{Ipv4Addr, TcpListener as StdTcpListener},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// What went wrong while setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("starting the TLS front: {0}")]
    Io(#[from] std::io::Error),
}

/// A fresh certificate authority and a server certificate it signed for
/// `127.0.0.1` and `localhost`.
pub struct TestCa {
    ca_pem: String,
    server_cert: CertificateDer<'static>,
    server_key: PrivatePkcs8KeyDer<'static>,
}

impl TestCa {
    pub fn new() -> Result<Self, TlsError> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "sluice test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let server_key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "127.0.0.1");
        let server_cert = params.signed_by(&server_key, &ca)?;
        Ok(Self {
            ca_pem: ca.pem(),
            server_cert: server_cert.der().clone(),
            server_key: PrivatePkcs8KeyDer::from(server_key.serialize_der()),
        })
    }

    /// The CA certificate (PEM), what clients trust.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }
}

/// Terminates TLS on a free port of 127.0.0.1 with the [`TestCa`]'s server
/// certificate and forwards each connection to a plain TCP port. It runs on
/// a runtime of its own, so sync and async tests can use it alike; dropping
/// it stops it.
pub struct TlsFront {
    port: u16,
    runtime: Option<tokio::runtime::Runtime>,
}

impl TlsFront {
    pub fn start(ca: &TestCa, backend_port: u16) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![ca.server_cert.clone()],
                PrivateKeyDer::Pkcs8(ca.server_key.clone_key()),
            )?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        // Bound here, synchronously: a test may already run inside a runtime.
        let listener = StdTcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.spawn(async move {
            let Ok(listener) = TcpListener::from_std(listener) else {
                return;
            };
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // A failed handshake (a client that does not trust the
                    // CA) just closes the connection, as a TLS server does.
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut backend) =
                        TcpStream::connect((Ipv4Addr::LOCALHOST, backend_port)).await
                    else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut backend).await;
                });
            }
        });
        Ok(Self {
            port,
            runtime: Some(runtime),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        // Not a blocking shutdown: the owner may be dropped inside a runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

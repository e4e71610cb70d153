//! TLS for test services: a CA and a server certificate made at test time
//! (rcgen), and a TLS server (rustls) presenting it, for the front
//! (`crate::front`) that terminates TLS before a service that cannot do TLS
//! itself.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::TlsAcceptor;

/// What went wrong while setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("making test certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
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

    /// A TLS server (rustls) presenting the server certificate, for a
    /// [`Front`](crate::front::Front) before a service that cannot do TLS.
    pub fn acceptor(&self) -> Result<TlsAcceptor, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(
                vec![self.server_cert.clone()],
                PrivateKeyDer::Pkcs8(self.server_key.clone_key()),
            )?;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

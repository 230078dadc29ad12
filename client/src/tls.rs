//! TLS of the client: the cluster's CA from the kubeconfig (or a flag),
//! else the system's roots; ring, the provider reqwest already builds.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{Config, Error};

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The rustls configuration for `config`'s https server.
pub(crate) fn client_config(config: &Config) -> Result<Arc<rustls::ClientConfig>, Error> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS: {e}")))?;
    let mut tls = if config.insecure_skip_tls_verify {
        builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerify(provider))).with_no_client_auth()
    } else {
        builder.with_root_certificates(roots(config)?).with_no_client_auth()
    };
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// The CA's certificates when one is given, else the system's.
fn roots(config: &Config) -> Result<RootCertStore, Error> {
    let mut roots = RootCertStore::empty();
    match &config.ca_pem {
        Some(pem) => {
            let source = if config.ca_source.is_empty() { "the certificate authority" } else { &config.ca_source };
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| Error::Config(format!("{source}: not a PEM certificate: {e}")))?;
                roots.add(cert).map_err(|e| Error::Config(format!("{source}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(Error::Config(format!("{source}: no PEM certificate in it")));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
        }
    }
    Ok(roots)
}

/// A TLS failure in words a user can act on.
pub(crate) fn explain(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer | C::BadSignature) => {
            "TLS: the server's certificate is not signed by a trusted CA (check certificate-authority-data in the kubeconfig)".into()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName) | rustls::Error::InvalidCertificate(C::NotValidForNameContext { .. }) => {
            "TLS: the server's certificate is not valid for this address (restart steward serve with --tls-san ADDRESS)".into()
        }
        rustls::Error::InvalidCertificate(C::Expired) | rustls::Error::InvalidCertificate(C::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired".into()
        }
        other => format!("TLS: {other}"),
    }
}

/// `insecure-skip-tls-verify`: any certificate is accepted; signatures are
/// still checked so the handshake itself is sound.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
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
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

//! TLS to a discovered peer, whose name is not known before the handshake: the server
//! certificate must chain to the peers CA and be valid for one of the DNS names it
//! carries (full WebPKI checks, for that name). Which name the peer is, is settled by
//! the handshake that follows: the peer proves a name, and its certificate must name
//! it (`peers::auth::certificate_names`, checked in `peers::dial`).

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;

/// The server name sent to a discovered peer (SNI); peers do not look at it.
pub const DISCOVERED: &str = "mqgate-peer";

#[derive(Debug)]
struct AnyPeerName(Arc<WebPkiServerVerifier>);

/// A verifier that accepts a certificate of `roots` for any DNS name it carries.
pub fn verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn ServerCertVerifier>, rustls::client::VerifierBuilderError> {
    let inner =
        WebPkiServerVerifier::builder_with_provider(roots, crate::tls::provider()).build()?;
    Ok(Arc::new(AnyPeerName(inner)))
}

/// The subjectAltName DNS entries of a DER certificate.
pub fn dns_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

impl ServerCertVerifier for AnyPeerName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("the peer's certificate names no DNS name".into());
        for name in dns_names(end_entity.as_ref()) {
            let Ok(sn) = ServerName::try_from(name) else {
                continue;
            };
            match self
                .0
                .verify_server_cert(end_entity, intermediates, &sn, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
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

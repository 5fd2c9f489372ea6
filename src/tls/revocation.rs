//! Client-certificate revocation on TLS listeners (`[listeners.tls] crl`): certificate
//! revocation lists read from PEM or DER files, given to rustls' client-certificate
//! verifier, and a wrapper around that verifier that names the serial number and
//! subject of a revoked certificate in the log (rustls only says "revoked").
//!
//! A CRL whose `nextUpdate` has passed refuses the clients it covers, as OpenSSL's
//! check does for HAProxy and NGINX (`CRL has expired`): an out-of-date list may miss
//! a revocation. `check`, `run` and reloads warn about such a file.
//!
//! CRLs are read with the rest of a listener's TLS material, so a reload (file watch,
//! SIGHUP, API) picks up a changed CRL for new handshakes, as it does certificates.

use crate::tls::TlsError;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use std::path::Path;
use std::sync::Arc;

/// What one CRL file holds.
#[derive(Debug)]
pub struct CrlFile {
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Each CRL whose `nextUpdate` had passed when the file was read: its issuer and
    /// `nextUpdate`, as OpenSSL prints them. Clients whose certificates such a CRL
    /// covers are refused until it is refreshed (as HAProxy and NGINX refuse them).
    pub out_of_date: Vec<(String, String)>,
}

/// Every CRL of `path`: each `X509 CRL` section of a PEM file, or the whole file as
/// one DER-encoded CRL when it is not PEM. Each is parsed once, which both checks it
/// and finds whether it is out of date.
pub fn load_crls(path: &Path) -> Result<CrlFile, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let crl_err = |msg: String| TlsError::Crl {
        path: path.display().to_string(),
        msg,
    };
    let crls: Vec<_> =
        if bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            CertificateRevocationListDer::pem_slice_iter(&bytes)
                .collect::<Result<_, _>>()
                .map_err(|e| crl_err(format!("not valid PEM: {e}")))?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
    if crls.is_empty() {
        return Err(crl_err(
            "no \"-----BEGIN X509 CRL-----\" section found".into(),
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut out_of_date = Vec::new();
    for c in &crls {
        let crl = match x509_parser::parse_x509_crl(c.as_ref()) {
            Ok((_, crl)) => crl,
            Err(e) => return Err(crl_err(format!("not a certificate revocation list: {e}"))),
        };
        if let Some(next) = crl.next_update().filter(|n| n.timestamp() < now) {
            out_of_date.push((crl.issuer().to_string(), next.to_string()));
        }
    }
    Ok(CrlFile { crls, out_of_date })
}

/// The CRLs of every file in `paths`, in order.
pub fn load_all(
    paths: &[std::path::PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut all = Vec::new();
    for p in paths {
        all.extend(load_crls(p)?.crls);
    }
    Ok(all)
}

/// A certificate's serial number as OpenSSL prints it (`openssl x509 -serial`:
/// upper-case hex) and its subject; `None` if it cannot be parsed.
pub fn serial_and_subject(der: &[u8]) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let serial: String = cert
        .tbs_certificate
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    Some((serial, cert.subject().to_string()))
}

/// A client-certificate verifier that logs the serial number and subject of a
/// revoked certificate, then fails the handshake as the inner verifier did.
#[derive(Debug)]
pub struct LogRevoked {
    pub inner: Arc<dyn ClientCertVerifier>,
    pub listener: String,
}

impl ClientCertVerifier for LogRevoked {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let r = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        let Err(rustls::Error::InvalidCertificate(e)) = &r else {
            return r;
        };
        let named =
            || serial_and_subject(end_entity.as_ref()).unwrap_or_else(|| ("?".into(), "?".into()));
        // At debug level the connection's span (client address) is current too: the
        // handshake runs in the connection's task.
        match e {
            CertificateError::Revoked => {
                let (serial, subject) = named();
                tracing::info!(listener = %self.listener, %serial, %subject, "refused: client certificate is revoked (listed in a crl file)");
            }
            CertificateError::ExpiredRevocationList
            | CertificateError::ExpiredRevocationListContext { .. } => {
                let (serial, subject) = named();
                tracing::info!(listener = %self.listener, %serial, %subject, "refused: the crl that covers this client certificate is out of date (its nextUpdate has passed); refresh the crl file");
            }
            _ => {}
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crl(number: u64) -> (rcgen::CertificateRevocationList, rcgen::Certificate) {
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let key = rcgen::KeyPair::generate().expect("key");
        let ca_cert = ca.self_signed(&key).expect("CA");
        let list = rcgen::CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2026, 1, 1),
            next_update: rcgen::date_time_ymd(2036, 1, 1),
            crl_number: rcgen::SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: vec![rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from(vec![0x10, 0x01]),
                revocation_time: rcgen::date_time_ymd(2026, 1, 2),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca_cert, &key)
        .expect("CRL");
        (list, ca_cert)
    }

    /// PEM files with several CRLs, DER files with one; anything else is an error
    /// that names the file.
    #[test]
    fn crls_are_read_from_pem_or_der_and_their_faults_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).expect("write");
            p
        };
        let (a, ca) = (crl(1), crl(2));
        let pem = format!("{}{}", a.0.pem().expect("pem"), ca.0.pem().expect("pem"));
        let two = load_crls(&write("two.pem", pem.as_bytes()))
            .expect("two PEM CRLs")
            .crls;
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].as_ref(), a.0.der().as_ref());
        let der = load_crls(&write("one.der", a.0.der()))
            .expect("a DER CRL")
            .crls;
        assert_eq!(der.len(), 1);
        let all = load_all(&[dir.path().join("two.pem"), dir.path().join("one.der")])
            .expect("both files");
        assert_eq!(all.len(), 3);

        let cert_pem = write("cert.pem", ca.1.pem().as_bytes());
        let e = load_crls(&cert_pem).expect_err("a certificate is no CRL");
        assert!(
            e.to_string().contains("no \"-----BEGIN X509 CRL-----\""),
            "{e}"
        );
        let e = load_crls(&write("junk.der", b"\x30\x03junk")).expect_err("junk");
        assert!(matches!(e, TlsError::Crl { .. }), "{e}");
        assert!(e.to_string().contains("junk.der"), "{e}");
        let e = load_crls(&dir.path().join("missing.crl")).expect_err("missing");
        assert!(matches!(e, TlsError::Read { .. }), "{e}");
    }

    #[test]
    fn the_serial_is_printed_as_openssl_prints_it() {
        let mut p = rcgen::CertificateParams::new(vec!["dev1".to_string()]).expect("params");
        p.serial_number = Some(rcgen::SerialNumber::from(vec![0x10, 0x0a]));
        p.distinguished_name.push(rcgen::DnType::CommonName, "dev1");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("cert");
        let (serial, subject) = serial_and_subject(cert.der()).expect("parsed");
        assert_eq!(serial, "100A");
        assert_eq!(subject, "CN=dev1");
        assert!(serial_and_subject(b"not a certificate").is_none());
    }
}

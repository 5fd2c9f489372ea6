//! Validation of the TLS keys added for issue 29: `[clusters.X.tls]` (TLS to the
//! brokers) and `[listeners.tls] crl` (client-certificate revocation), with the
//! checker [`V`] of `validate`; the material is loaded exactly as `run` and
//! every reload load it (`crate::broker_tls::client_config`,
//! `crate::tls::revocation::load_crls`), so `check` refuses what `run` would.

use super::checker::V;
use super::raw::*;
use super::*;

/// `[clusters.X.tls]` of a cluster whose key path is `prefix`, with its nodes (each
/// node's host is the name checked when `server_name` is not set).
pub(super) fn broker_tls(
    v: &mut V,
    prefix: &str,
    t: Option<&RawBrokerTls>,
    nodes: &[NodeConfig],
) -> Option<BrokerTlsConfig> {
    let t = t?;
    let k = |s: &str| format!("{prefix}.{s}");
    let cfg = BrokerTlsConfig {
        ca: v.existing_file(k("ca"), &t.ca),
        cert: t.cert.as_ref().map(|c| v.existing_file(k("cert"), c)),
        key: t.key.as_ref().map(|c| v.existing_file(k("key"), c)),
        server_name: t.server_name.clone(),
        min_version: v.one_of(
            k("min_version"),
            &t.min_version,
            &[("1.2", TlsVersion::V1_2), ("1.3", TlsVersion::V1_3)],
        ),
    };
    match (&cfg.cert, &cfg.key) {
        (Some(_), None) => v.err(k("key"), "a client certificate (cert) needs its key"),
        (None, Some(_)) => v.err(k("cert"), "a client key (key) needs its certificate (cert)"),
        _ => {}
    }
    match &cfg.server_name {
        Some(n) => {
            if crate::broker_tls::server_name(n).is_none() {
                v.err_hint(
                    k("server_name"),
                    format!("{n:?} is not a valid DNS name or IP address"),
                    "the name the brokers' certificates are issued for, e.g. \"broker.internal\"",
                );
            }
        }
        None => {
            for n in nodes {
                if crate::broker_tls::server_name(&n.address.host).is_none() {
                    v.err_hint(
                        k("server_name"),
                        format!(
                            "node {:?}: its host {:?} cannot be checked as a TLS server name",
                            n.name, n.address.host
                        ),
                        "set server_name to the name the brokers' certificates are issued for",
                    );
                }
            }
        }
    }
    let build = || crate::broker_tls::client_config(&cfg).map(drop);
    match (&cfg.cert, &cfg.key) {
        (Some(cert), Some(key)) => {
            v.tls_material(prefix, cert, key, Some(("ca", &cfg.ca)), build);
        }
        _ if cfg.ca.is_file() => {
            if let Err(e) = build() {
                v.err_hint(
                    k("ca"),
                    e.to_string(),
                    "a PEM bundle of CA certificates (-----BEGIN CERTIFICATE-----)",
                );
            }
        }
        _ => {}
    }
    Some(cfg)
}

/// `crl` of a listener's `[tls]` (key path `prefix`): one path or a list, each file
/// read (PEM or DER) and parsed as `run` reads it.
pub(super) fn crl_files(v: &mut V, prefix: &str, t: &RawTls) -> Vec<PathBuf> {
    let Some(raw) = &t.crl else {
        return Vec::new();
    };
    let list = raw.to_vec();
    let one = matches!(raw, RawPaths::One(_));
    let key = |j: usize| {
        if one {
            format!("{prefix}.crl")
        } else {
            format!("{prefix}.crl[{j}]")
        }
    };
    if t.client_ca.is_none() {
        v.err_hint(
            format!("{prefix}.crl"),
            "a CRL needs client certificates: crl without client_ca has nothing to check",
            "add client_ca = \"/etc/mqgate/clients-ca.pem\" (the CA that issued the clients' \
             certificates)",
        );
    }
    if list.is_empty() {
        v.err(
            format!("{prefix}.crl"),
            "an empty list: name at least one CRL file, or remove the key",
        );
    }
    let mut paths = Vec::new();
    for (j, p) in list.iter().enumerate() {
        let path = v.existing_file(key(j), p);
        if path.is_file() {
            match crate::tls::revocation::load_crls(&path) {
                Err(e) => v.err_hint(
                    key(j),
                    e.to_string(),
                    "a certificate revocation list, PEM (-----BEGIN X509 CRL-----) or DER, as \
                     `openssl ca -gencrl` writes it",
                ),
                Ok(file) => {
                    for (issuer, next) in file.out_of_date {
                        v.warn(
                            key(j),
                            format!(
                                "the CRL of {issuer} is out of date (nextUpdate {next} has \
                                 passed): clients whose certificates it covers are refused \
                                 until it is refreshed"
                            ),
                            "write a new CRL over the file (`openssl ca -gencrl`): mqgate \
                             reloads it",
                        );
                    }
                }
            }
        }
        paths.push(path);
    }
    paths
}

//! Development certificates (`qualcache certs`): a dev CA, a server
//! certificate for localhost / 127.0.0.1 / ::1, and terminal certificates
//! whose subject common name is the terminal's medical institution code.
//! Production deployments use their own PKI; these are for demos and tests.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use serde::Serialize;

use crate::model::numbers::check_digit;
use crate::model::InstitutionCode;

/// What `certs` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DevCerts {
    /// The CA certificate (PEM): servers trust terminals signed by it and
    /// terminals trust the server signed by it.
    pub ca: PathBuf,
    /// Server certificate and key (PEM).
    pub server_cert: PathBuf,
    /// Server key.
    pub server_key: PathBuf,
    /// Terminal certificates: (institution code, certificate, key).
    pub terminals: Vec<Terminal>,
}

/// One terminal's credentials.
#[derive(Debug, Clone, Serialize)]
pub struct Terminal {
    /// The institution code in the certificate.
    pub institution: String,
    /// Certificate (PEM).
    pub cert: PathBuf,
    /// Key (PEM).
    pub key: PathBuf,
}

/// The `i`-th distinct, valid institution code: prefecture, fee table
/// (medical, dental, pharmacy), district and number vary with `i`.
pub fn institution_code(i: usize) -> InstitutionCode {
    let pref = 1 + (i / 900_000) % 47;
    let fee = [1, 3, 4][(i / 300_000) % 3];
    let district = (i / 10_000) % 30;
    let number = i % 10_000;
    let body = format!("{pref:02}{fee}{district:02}{number:04}");
    let digits: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    format!("{body}{}", check_digit(&digits))
        .parse()
        .expect("built with a valid check digit")
}

/// A CA able to sign terminal and server certificates.
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl std::fmt::Debug for DevCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DevCa")
    }
}

impl DevCa {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str) -> Result<DevCa> {
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(DevCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate for localhost, 127.0.0.1 and ::1: (cert, key) PEM.
    pub fn server(&self) -> Result<(String, String)> {
        let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse()?));
        params
            .subject_alt_names
            .push(SanType::IpAddress("::1".parse()?));
        params
            .distinguished_name
            .push(DnType::CommonName, "qualcached");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A terminal certificate for `code`, valid from `not_before` to
    /// `not_after` (Unix seconds): (cert, key) PEM.
    pub fn terminal(
        &self,
        code: InstitutionCode,
        not_before: i64,
        not_after: i64,
    ) -> Result<(String, String)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, code.to_string());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "qualcache terminal");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = time::OffsetDateTime::from_unix_timestamp(not_before)?;
        params.not_after = time::OffsetDateTime::from_unix_timestamp(not_after)?;
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> Result<(String, String)> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Unix time now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Terminal certificates made with the daemon's development certificates
/// (`[tls] dev_certs`): as many as the load generator's default terminals,
/// so `qualcache-loadtest run` works against the demo daemon as it is.
pub const DEV_TERMINALS: usize = 1000;

/// Writes a dev CA, a server certificate and `terminals` terminal
/// certificates (valid for a year) into `out`.
pub fn generate(out: &Path, terminals: usize) -> Result<DevCerts> {
    fs::create_dir_all(out.join("terminals"))
        .with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &Path, text: &str| {
        fs::write(name, text).with_context(|| format!("writing {}", name.display()))
    };
    let ca = DevCa::new("qualcache dev CA")?;
    let ca_path = out.join("ca.pem");
    write(&ca_path, ca.pem())?;
    let (cert, key) = ca.server()?;
    let (server_cert, server_key) = (out.join("server.pem"), out.join("server.key"));
    write(&server_cert, &cert)?;
    write(&server_key, &key)?;
    let start = now() - 3_600;
    let mut list = Vec::with_capacity(terminals);
    for i in 0..terminals {
        let code = institution_code(i);
        let (cert, key) = ca.terminal(code, start, start + 366 * 86_400)?;
        let t = Terminal {
            institution: code.to_string(),
            cert: out.join("terminals").join(format!("{code}.pem")),
            key: out.join("terminals").join(format!("{code}.key")),
        };
        write(&t.cert, &cert)?;
        write(&t.key, &key)?;
        list.push(t);
    }
    Ok(DevCerts {
        ca: ca_path,
        server_cert,
        server_key,
        terminals: list,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn institution_codes_are_valid_and_distinct() {
        let codes: std::collections::HashSet<String> = (0..20_000)
            .map(|i| institution_code(i).to_string())
            .collect();
        assert_eq!(codes.len(), 20_000);
        for c in codes.iter().take(50) {
            assert!(c.parse::<InstitutionCode>().is_ok(), "{c}");
        }
    }
}

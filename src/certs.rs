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
        self.terminal_named(&code.to_string(), not_before, not_after)
    }

    /// A terminal certificate whose subject common name is `common_name`,
    /// valid or not as an institution code (tests of refusals use it).
    pub fn terminal_named(
        &self,
        common_name: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<(String, String)> {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
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

/// The mode private keys are created with (less what the umask clears):
/// owner read-write only.
pub const KEY_MODE: u32 = 0o600;

/// Writes `text` to `path` as a new file with mode [`KEY_MODE`]; a file
/// already there is removed first, so an old, wider mode does not survive.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(KEY_MODE)
        .open(path)?
        .write_all(text.as_bytes())
}

/// Writes a dev CA, a server certificate and `terminals` terminal
/// certificates (valid for a year) into `out`. Certificates are written
/// as ordinary files; private keys with mode [`KEY_MODE`].
pub fn generate(out: &Path, terminals: usize) -> Result<DevCerts> {
    fs::create_dir_all(out.join("terminals"))
        .with_context(|| format!("creating {}", out.display()))?;
    let write = |name: &Path, text: &str| {
        fs::write(name, text).with_context(|| format!("writing {}", name.display()))
    };
    let write_key = |name: &Path, text: &str| {
        write_private(name, text).with_context(|| format!("writing {}", name.display()))
    };
    let ca = DevCa::new("qualcache dev CA")?;
    let ca_path = out.join("ca.pem");
    write(&ca_path, ca.pem())?;
    let (cert, key) = ca.server()?;
    let (server_cert, server_key) = (out.join("server.pem"), out.join("server.key"));
    write(&server_cert, &cert)?;
    write_key(&server_key, &key)?;
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
        write_key(&t.key, &key)?;
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

    /// The check digit of a 10-digit institution code, computed here
    /// independently of `model::numbers`: from the right, the body's
    /// digits weighted 2, 1, 2, ...; a two-digit product counts as the sum
    /// of its digits; the check digit brings the total to a multiple of 10.
    fn expected_check_digit(code: &str) -> u32 {
        let body: Vec<u32> = code[..9].chars().map(|c| c.to_digit(10).unwrap()).collect();
        let mut total = 0;
        for (i, d) in body.iter().rev().enumerate() {
            let p = d * if i % 2 == 0 { 2 } else { 1 };
            total += p / 10 + p % 10;
        }
        (10 - total % 10) % 10
    }

    #[test]
    fn institution_codes_are_valid_and_distinct() {
        let codes: std::collections::HashSet<String> = (0..20_000)
            .map(|i| institution_code(i).to_string())
            .collect();
        assert_eq!(codes.len(), 20_000);
        for c in &codes {
            assert_eq!(c.len(), 10, "{c}");
            assert_eq!(
                c[9..].parse::<u32>().unwrap(),
                expected_check_digit(c),
                "{c}"
            );
        }
        // Prefecture 01-47, fee table 1 (medical), 3 (dental) or 4 (pharmacy).
        for i in [0, 299_999, 300_000, 600_000, 900_000, 47 * 900_000 - 1] {
            let c = institution_code(i).to_string();
            let pref: u32 = c[..2].parse().unwrap();
            assert!((1..=47).contains(&pref), "{i}: {c}");
            assert!(matches!(&c[2..3], "1" | "3" | "4"), "{i}: {c}");
        }
    }

    /// Each terminal certificate's subject common name is the terminal's
    /// own valid institution code (what the server reads as its identity),
    /// distinct across terminals, and the file names carry the same code.
    #[test]
    fn terminal_certificates_carry_their_institution_code() {
        let dir = tempfile::tempdir().unwrap();
        let made = generate(dir.path(), 12).unwrap();
        let mut seen = std::collections::HashSet::new();
        for t in &made.terminals {
            let pem = fs::read(&t.cert).unwrap();
            let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
            let cert = pem.parse_x509().unwrap();
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(cn, t.institution);
            assert_eq!(
                cn[9..].parse::<u32>().unwrap(),
                expected_check_digit(&cn),
                "{cn}"
            );
            assert!(cn.parse::<InstitutionCode>().is_ok(), "{cn}");
            assert_eq!(
                t.cert.file_name().unwrap().to_str().unwrap(),
                format!("{cn}.pem")
            );
            assert!(seen.insert(cn), "two terminals share a code");
        }
        assert_eq!(seen.len(), 12);
    }
}

//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod history;
pub mod wire;

use std::path::{Path, PathBuf};

use qualcache::model::{
    Branch, CardClass, CardDigest, CardKey, CardLink, CardSerial, CardStatus, Date, EnrolleeRecord,
    InsurerNumber, KeyText, Loss, LossReason, PayerNumber, Percent, PublicExpense, Qualification,
    RecipientNumber, Relation, Sex,
};
use qualcache::snapshot::{write_snapshot, Builder, Snapshot, SnapshotMeta};

pub fn date(s: &str) -> Date {
    s.parse().unwrap()
}

/// A plain valid qualification: 協会けんぽ 東京 (01130012), symbol "1234",
/// number and branch as given.
pub fn qual(number: &str, branch: Option<u8>, birth: &str, acquired: &str) -> Qualification {
    Qualification {
        insurer_number: "01130012".parse::<InsurerNumber>().unwrap(),
        insurer_name: "全国健康保険協会　東京支部".into(),
        card_class: CardClass::General,
        symbol: Some("1234".parse::<KeyText>().unwrap()),
        number: number.parse().unwrap(),
        branch: branch.map(|b| Branch::new(b).unwrap()),
        relation: if branch.unwrap_or(0) == 0 {
            Relation::Insured
        } else {
            Relation::Dependent
        },
        name: "山田　太郎".into(),
        name_kana: "ヤマダ　タロウ".into(),
        sex: Sex::Male,
        birth_date: date(birth),
        acquired_date: date(acquired),
        loss: None,
        certificate: None,
        copay_percent: Percent::Thirty,
        preschool: false,
        elderly: None,
        limit_category: None,
        specific_disease: None,
        public_expense: None,
    }
}

/// `q`, lost on `on` (reason 03).
pub fn lost(mut q: Qualification, on: &str) -> Qualification {
    q.loss = Some(Loss {
        date: date(on),
        reason: LossReason::JoinedOtherInsurance,
    });
    q
}

/// A medical-aid qualification (payer 12130019, scheme 12).
pub fn medical_aid(number: &str, birth: &str, acquired: &str, registered: bool) -> Qualification {
    let payer: PayerNumber = "12130019".parse().unwrap();
    let mut q = qual(number, None, birth, acquired);
    q.insurer_number = "12130019".parse().unwrap();
    q.insurer_name = "東京福祉事務所".into();
    q.card_class = CardClass::MedicalAid;
    q.symbol = None;
    q.copay_percent = Percent::Zero;
    q.public_expense = Some(PublicExpense {
        payer,
        recipient: RecipientNumber::from_value(number.parse().unwrap()).unwrap(),
        welfare_office: "東京福祉事務所".into(),
        registered,
    });
    q
}

/// The digest of a card serial (hexadecimal) under the demo key.
pub fn digest(serial: &str) -> CardDigest {
    CardKey::demo().digest(&serial.parse::<CardSerial>().expect("a hexadecimal serial"))
}

/// A card link under the demo key.
pub fn card(serial: &str, status: CardStatus) -> Option<CardLink> {
    Some(CardLink {
        digest: digest(serial),
        status,
    })
}

pub fn rec(person_id: u64, card: Option<CardLink>, q: Qualification) -> EnrolleeRecord {
    EnrolleeRecord {
        person_id,
        card,
        qualification: q,
    }
}

/// Builds and writes a snapshot of `records` into `dir`, and opens it.
pub fn snapshot(dir: &Path, records: Vec<EnrolleeRecord>) -> Snapshot {
    let mut b = Builder::new();
    for (i, r) in records.into_iter().enumerate() {
        b.push(i as u64 + 2, r).unwrap();
    }
    let body = b.finish().unwrap();
    let meta = SnapshotMeta {
        source: "test".into(),
        source_version: 0,
        card_key_id: CardKey::demo().id(),
    };
    let written = write_snapshot(dir, &body, &meta).unwrap();
    Snapshot::open(&written.path).unwrap()
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_qualcache"))
}

/// Runs the `qualcache` binary; returns (exit ok, stdout, stderr).
pub fn run(args: &[&str]) -> (bool, String, String) {
    outcome(
        std::process::Command::new(bin())
            .args(args)
            .env_remove("QUALCACHE_CARD_KEY"),
    )
}

/// Runs `cmd` to the end; returns (exit ok, stdout, stderr).
pub fn outcome(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The address in qualcached's "serving ... listen=ADDR ..." log line.
pub fn listen_addr(line: &str) -> Option<std::net::SocketAddr> {
    if !line.contains("serving") {
        return None;
    }
    line.split("listen=")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Server TLS from the server certificate of `certs`, default transport.
pub fn server_tls(certs: &qualcache::certs::DevCerts) -> quinn::ServerConfig {
    qualcache::tls::server_config(
        &certs.server_cert,
        &certs.server_key,
        &certs.ca,
        qualcache::tls::Transport::default(),
    )
    .unwrap()
}

/// Client TLS for the first terminal certificate in a `qualcache certs`
/// folder.
pub fn first_terminal(certs: &Path) -> quinn::ClientConfig {
    let t = std::fs::read_dir(certs.join("terminals"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pem"))
        .unwrap();
    qualcache::tls::client_config(&certs.join("ca.pem"), &t, &t.with_extension("key")).unwrap()
}

/// This process's umask (from /proc/self/status; 0o022 where that is not
/// available), so tests can tell the mode a file was created with.
pub fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// The permission bits of `path`.
pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// One HTTP/1.1 GET to `addr`: (status code, body).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: qualcache\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The value of the sample `name{labels}` (exactly as written, labels
/// included) in Prometheus text, if there is one.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Sends `signal` (`"-HUP"`, `"-TERM"`, ...) to process `pid` with
/// kill(1); panics if it cannot be sent.
pub fn signal(pid: &str, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}: {status}");
}

/// What a progress watcher was told: each stage with its total, and the
/// units reported in it.
#[derive(Default)]
pub struct Tape(std::sync::Mutex<Vec<(String, Option<u64>, u64)>>);

impl qualcache::progress::Watch for Tape {
    fn stage(&self, what: &str, total: Option<u64>, _: qualcache::progress::Unit) {
        self.0.lock().unwrap().push((what.to_string(), total, 0));
    }
    fn advance(&self, n: u64) {
        let mut stages = self.0.lock().unwrap();
        stages.last_mut().expect("advance before any stage").2 += n;
    }
    fn finish(&self) {}
}

impl Tape {
    /// The stages told so far, and forgets them.
    pub fn stages(&self) -> Vec<(String, Option<u64>, u64)> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

//! Commit-to-answer latency of qualcached's change feed: single-person
//! changes committed in PostgreSQL one after another, each timed from the
//! commit's acknowledgement until the daemon answers it; then the change
//! throughput of one large transaction.
//!
//! A change flips a person's card between registered and restricted, so
//! its arrival is seen by a card lookup (CARD_RESTRICTED or not). The
//! daemon is polled every [`POLL`] on one terminal connection, so a
//! latency is over by at most that plus one request's round trip.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qualcache::client::Client;
use qualcache::model::{CardKey, Status};
use qualcache::probe::{read_probes, ProbeLookup};
use qualcache::protocol::pb;
use qualcache::store::postgres::PgSource;
use serde::Serialize;

/// How often the daemon is asked whether a change has arrived.
pub const POLL: Duration = Duration::from_millis(1);

/// Longest wait for one change before the run fails.
const GIVE_UP: Duration = Duration::from_secs(30);

/// What to measure.
#[derive(Debug, Clone)]
pub struct FreshnessOptions {
    /// The daemon.
    pub addr: SocketAddr,
    /// Output of `qualcache certs` (the first terminal is used).
    pub certs: PathBuf,
    /// The database the daemon follows.
    pub pg: PgSource,
    /// probes.jsonl of the data loaded (card serials).
    pub probes: PathBuf,
    /// The card key the data was made with.
    pub card_key: CardKey,
    /// Single-person changes to time.
    pub changes: usize,
    /// Persons changed in the one large transaction (0: none).
    pub batch: u64,
    /// Run the large transaction first, so the single-person changes are
    /// timed with its persons in the overlay.
    pub batch_first: bool,
}

/// Latency figures, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Millis {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
}

/// What a freshness run measured.
#[derive(Debug, Clone, Serialize)]
pub struct FreshnessReport {
    /// Single-person changes timed.
    pub changes: usize,
    /// From a commit's acknowledgement to the daemon's first answer
    /// reflecting it.
    pub commit_to_answer_ms: Millis,
    /// Persons changed in the large transaction.
    pub batch_persons: u64,
    /// From its commit to the daemon's change position reaching it,
    /// seconds.
    pub batch_seconds: f64,
    /// `batch_persons / batch_seconds`.
    pub batch_persons_per_second: f64,
}

fn card(serial: &str) -> pb::Request {
    pb::Request {
        as_of: 0,
        kind: Some(pb::request::Kind::Card(pb::CardLookup {
            serial: serial.into(),
        })),
    }
}

async fn status(client: &Client) -> Result<pb::ServerStatus> {
    client
        .request(&pb::Request {
            as_of: 0,
            kind: Some(pb::request::Kind::Status(pb::StatusRequest {})),
        })
        .await?
        .server
        .context("the status answer has no server status")
}

/// Runs the measurement.
pub async fn run(o: &FreshnessOptions) -> Result<FreshnessReport> {
    let db = o.pg.connect().await?;
    let creds = crate::run::terminal_certs(&o.certs, 1)?;
    let config = qualcache::tls::client_config(&o.certs.join("ca.pem"), &creds[0].0, &creds[0].1)?;
    let client = Client::connect(o.addr, "localhost", config)
        .await
        .context("connecting to the daemon")?;
    if status(&client).await?.change_position == 0 {
        bail!("the daemon reports no change feed (change_position 0): is its [source] this database, with overlay_max_persons > 0?");
    }

    // Persons with a registered card whose serial the probes know.
    let serials: HashMap<Vec<u8>, String> = read_probes(&o.probes)?
        .into_iter()
        .filter_map(|p| match p.lookup {
            ProbeLookup::Card { serial } => {
                let digest = o.card_key.digest(&serial.parse().ok()?);
                Some((digest.as_bytes().to_vec(), serial))
            }
            _ => None,
        })
        .collect();
    let digests: Vec<Vec<u8>> = serials.keys().cloned().collect();
    let rows = db
        .query(
            "SELECT person_id, digest FROM card_links
              WHERE status = 'registered' AND digest = ANY($1) ORDER BY person_id",
            &[&digests],
        )
        .await
        .context("finding persons with known cards")?;
    let mut persons: Vec<(i64, String)> = Vec::new();
    for r in &rows {
        let serial = &serials[&r.get::<_, Vec<u8>>(1)];
        // Only cards answered VALID now, so a flip is seen.
        let a = client.request(&card(serial)).await?;
        if a.answer
            .is_some_and(|a| a.status == Status::Valid.code() as i32)
        {
            persons.push((r.get(0), serial.clone()));
        }
    }
    if persons.is_empty() {
        bail!("no person with a registered card from the probes answers VALID");
    }

    let mut first = None;
    if o.batch > 0 && o.batch_first {
        first = Some(batch(o, &db, &client).await?);
    }
    let mut latencies = Vec::with_capacity(o.changes);
    let mut restricted = vec![false; persons.len()];
    for i in 0..o.changes {
        let k = i % persons.len();
        let (id, serial) = &persons[k];
        restricted[k] = !restricted[k];
        let (to, want) = if restricted[k] {
            ("restricted", Status::CardRestricted)
        } else {
            ("registered", Status::Valid)
        };
        db.execute(
            "UPDATE card_links SET status = $1 WHERE person_id = $2",
            &[&to, id],
        )
        .await
        .context("committing a change")?;
        let committed = Instant::now();
        loop {
            let r = client.request(&card(serial)).await?;
            if r.answer.is_some_and(|a| a.status == want.code() as i32) {
                latencies.push(committed.elapsed());
                break;
            }
            if committed.elapsed() > GIVE_UP {
                bail!("change {i} was not answered within {GIVE_UP:?}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
    // Put the cards back as they were.
    for (k, (id, _)) in persons.iter().enumerate() {
        if restricted[k] {
            db.execute(
                "UPDATE card_links SET status = 'registered' WHERE person_id = $1",
                &[id],
            )
            .await?;
        }
    }

    let (mut batch_seconds, mut per_second) = first.unwrap_or((0.0, 0.0));
    if o.batch > 0 && !o.batch_first {
        (batch_seconds, per_second) = batch(o, &db, &client).await?;
    }
    client.close().await;

    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    Ok(FreshnessReport {
        changes: latencies.len(),
        commit_to_answer_ms: Millis {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            max: at(1.0),
        },
        batch_persons: o.batch,
        batch_seconds,
        batch_persons_per_second: per_second,
    })
}

/// Commits one transaction changing `o.batch` persons and waits until the
/// daemon's change position reaches it: (seconds, persons per second).
async fn batch(
    o: &FreshnessOptions,
    db: &tokio_postgres::Client,
    client: &Client,
) -> Result<(f64, f64)> {
    // A no-op update still logs every person it touches.
    db.execute(
        "UPDATE persons SET sex = sex WHERE person_id IN
           (SELECT person_id FROM persons ORDER BY person_id LIMIT $1)",
        &[&(o.batch as i64)],
    )
    .await
    .context("committing the large transaction")?;
    let committed = Instant::now();
    let target: i64 = db
        .query_one("SELECT value FROM change_counter", &[])
        .await?
        .get(0);
    while status(client).await?.change_position < target as u64 {
        if committed.elapsed() > GIVE_UP * 4 {
            bail!(
                "the large transaction was not answered within {:?}",
                GIVE_UP * 4
            );
        }
        tokio::time::sleep(POLL * 10).await;
    }
    let seconds = committed.elapsed().as_secs_f64();
    Ok((seconds, o.batch as f64 / seconds))
}

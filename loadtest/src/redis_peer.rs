//! The Redis peer: the same answers stored in Redis, one key per lookup
//! key, so the same schedule can run as Redis GETs (MGET for batches).
//!
//! Keys: `qc:<as_of>:c:<card digest hex>` and
//! `qc:<as_of>:i:<insurer>:<symbol>:<number>:<branch>:<birth>` (normalised);
//! values: the encoded `Answer` the daemon would send. Lookups that find
//! nothing have no key: a missing key answers NOT_FOUND (numbers) or
//! CARD_NOT_REGISTERED (card).

use std::path::Path;

use anyhow::{Context, Result};
use prost::Message;
use qualcache::model::{CardKey, InsuranceKey};
use qualcache::probe::{Probe, ProbeLookup};
use qualcache::protocol::{self, pb};
use qualcache::snapshot::Snapshot;

/// The Redis key of a lookup made as of `as_of` (`YYYYMMDD`), if its key
/// parses.
pub fn key(lookup: &ProbeLookup, as_of: u32, card_key: &CardKey) -> Option<String> {
    match lookup {
        ProbeLookup::Card { serial } => Some(format!("qc:{as_of}:c:{}", card_key.digest(serial))),
        ProbeLookup::Insurance {
            insurer,
            symbol,
            number,
            branch,
            birth,
        } => {
            let k =
                InsuranceKey::parse(insurer, symbol.as_deref(), number, branch.as_deref()).ok()?;
            Some(format!(
                "qc:{as_of}:i:{}:{}:{}:{}:{birth}",
                k.insurer,
                k.symbol.map(|s| s.to_string()).unwrap_or_default(),
                k.number,
                k.branch.map(|b| b.to_string()).unwrap_or_default()
            ))
        }
    }
}

/// The status a missing key stands for.
pub fn missing_status(lookup: &ProbeLookup) -> i32 {
    match lookup {
        ProbeLookup::Card { .. } => pb::Status::CardNotRegistered as i32,
        ProbeLookup::Insurance { .. } => pb::Status::NotFound as i32,
    }
}

/// Deletes every `qc:` key (an earlier load's answers, which may no longer
/// be true); returns how many there were.
async fn clear(con: &mut redis::aio::MultiplexedConnection) -> Result<usize> {
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg("qc:*")
            .arg("COUNT")
            .arg(1000)
            .query_async(con)
            .await
            .context("listing earlier answers in Redis")?;
        if !keys.is_empty() {
            deleted += keys.len();
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(con)
                .await
                .context("deleting earlier answers from Redis")?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

/// Replaces the Redis peer's answers: deletes every earlier `qc:` key, then
/// stores the answer of every probe (as the snapshot gives it) under its
/// key; returns how many keys were set. A probe whose key does not parse
/// is an error naming it (its position in the file).
pub async fn load(
    url: &str,
    snapshot: &Path,
    probes: &[Probe],
    card_key: &CardKey,
) -> Result<usize> {
    let snap =
        Snapshot::open(snapshot).with_context(|| format!("opening {}", snapshot.display()))?;
    let client = redis::Client::open(url).with_context(|| format!("redis URL {url}"))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    clear(&mut con).await?;
    let mut set = 0;
    for (c, chunk) in probes.chunks(1000).enumerate() {
        let mut pipe = redis::pipe();
        for (i, p) in chunk.iter().enumerate() {
            let as_of = protocol::day(p.as_of);
            let Some(k) = key(&p.lookup, as_of, card_key) else {
                anyhow::bail!(
                    "probe {} ({}): its insurance numbers do not parse, so it has no Redis key",
                    c * 1000 + i + 1,
                    p.case
                );
            };
            let answer = p.lookup.run(&snap, card_key, p.as_of)?;
            let msg = protocol::answer(&answer, &snap);
            if msg.status == missing_status(&p.lookup) {
                continue;
            }
            pipe.cmd("SET").arg(k).arg(msg.encode_to_vec()).ignore();
            set += 1;
        }
        pipe.query_async::<()>(&mut con)
            .await
            .context("storing answers in Redis")?;
    }
    Ok(set)
}

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

/// A Redis URL. Shown (`Debug`, `Display`, JSON) without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as given.
    pub fn new(url: impl Into<String>) -> RedisUrl {
        RedisUrl(url.into())
    }

    /// The URL with its password, to connect with.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with a password in it replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let Some(start) = url.find("://").map(|i| i + 3) else {
            return url.clone();
        };
        let authority_end = url[start..].find('/').map_or(url.len(), |i| start + i);
        let Some(at) = url[start..authority_end].rfind('@').map(|i| start + i) else {
            return url.clone();
        };
        match url[start..at].find(':').map(|i| start + i) {
            Some(colon) => format!("{}:***{}", &url[..colon], &url[at..]),
            None => url.clone(),
        }
    }
}

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.redacted(), f)
    }
}

impl std::fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl serde::Serialize for RedisUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.redacted())
    }
}

/// The Redis key of a lookup made as of `as_of` (`YYYYMMDD`), if its key
/// parses.
pub fn key(lookup: &ProbeLookup, as_of: u32, card_key: &CardKey) -> Option<String> {
    match lookup {
        ProbeLookup::Card { serial } => Some(format!(
            "qc:{as_of}:c:{}",
            card_key.digest(&serial.parse().ok()?)
        )),
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

/// Replaces the Redis peer's answers: checks every probe and computes its
/// answer (as the snapshot gives it) first, then deletes every earlier
/// `qc:` key and stores the answers under their keys; returns how many
/// keys were set. A probe whose key does not parse is an error naming it
/// (its position in the file), and leaves Redis as it was.
pub async fn load(
    url: &RedisUrl,
    snapshot: &Path,
    probes: &[Probe],
    card_key: &CardKey,
) -> Result<usize> {
    let snap =
        Snapshot::open(snapshot).with_context(|| format!("opening {}", snapshot.display()))?;
    let mut entries = Vec::with_capacity(probes.len());
    for (i, p) in probes.iter().enumerate() {
        let as_of = protocol::day(p.as_of);
        let Some(k) = key(&p.lookup, as_of, card_key) else {
            anyhow::bail!(
                "probe {} ({}): its card serial or insurance numbers do not parse, so it has no Redis key",
                i + 1,
                p.case
            );
        };
        let answer = p.lookup.run(&snap, card_key, p.as_of)?;
        let msg = protocol::answer(&answer, &snap);
        if msg.status != missing_status(&p.lookup) {
            entries.push((k, msg.encode_to_vec()));
        }
    }
    let client = redis::Client::open(url.expose()).with_context(|| format!("redis URL {url}"))?;
    let mut con = client
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {url}"))?;
    clear(&mut con).await?;
    for chunk in entries.chunks(1000) {
        let mut pipe = redis::pipe();
        for (k, v) in chunk {
            pipe.cmd("SET").arg(k).arg(v).ignore();
        }
        pipe.query_async::<()>(&mut con)
            .await
            .context("storing answers in Redis")?;
    }
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::RedisUrl;

    #[test]
    fn a_password_in_a_redis_url_is_never_shown() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://:s3cret@127.0.0.1:6379/9",
                "redis://:***@127.0.0.1:6379/9",
            ),
            ("redis://app:s3cret@host:6379", "redis://app:***@host:6379"),
            ("redis://app:p@ss@host/0", "redis://app:***@host/0"),
            ("redis://app@host", "redis://app@host"),
        ] {
            let u = RedisUrl::new(url);
            assert_eq!(u.redacted(), shown);
            assert_eq!(u.to_string(), shown);
            assert_eq!(format!("{u:?}"), format!("{shown:?}"));
            assert_eq!(serde_json::to_string(&u).unwrap(), format!("{shown:?}"));
            assert_eq!(u.expose(), url);
        }
    }
}

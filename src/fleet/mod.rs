//! The fleet: snapshots published to an object store (S3 or S3-compatible
//! through `object_store`, or a local directory), pulled by every replica,
//! and switched to together by a pointer.
//!
//! Layout under the store's prefix:
//!
//! ```text
//! generations/<g>.qcs    the snapshot file, byte for byte
//! generations/<g>.json   its manifest (Manifest), written last: a
//!                        generation exists once its manifest does
//! current.json           the pointer (Pointer): the generation to serve
//!                        and when; the only object ever replaced, and
//!                        only by a conditional put on its previous ETag
//! replicas/<id>.json     each replica's report (Report)
//! ```
//!
//! Invariants: a generation's manifest is created once (create-only put)
//! and never replaced; a replica serves only a generation whose bytes
//! matched its manifest's size and checksum and passed the daemon's open
//! checks; the pointer names a published generation.

mod location;
mod publish;
mod pull;

pub use location::StoreSettings;
pub use publish::{publish, Published};
pub use pull::pull;

use std::sync::Arc;

use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// The pointer's object name.
pub const POINTER: &str = "current.json";

/// How many earlier pointer targets `current.json` remembers for
/// `fleet rollback`.
const HISTORY: usize = 16;

/// What can go wrong with the fleet's store.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The store URL or its settings.
    #[error("fleet store {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// A request to the store failed.
    #[error("{what}: {error}")]
    Store {
        /// What was asked, and of which object.
        what: String,
        /// The store's error (in the message, not repeated as a cause).
        error: object_store::Error,
    },
    /// An object that should hold JSON does not.
    #[error("{object}: not a valid {kind}: {reason}")]
    Malformed {
        /// Which object.
        object: String,
        /// What it should be.
        kind: &'static str,
        /// The parse error.
        reason: String,
    },
    /// The generation is published already (its manifest exists).
    #[error("generation {0} is published already (generations are never replaced)")]
    Exists(u64),
    /// The pointer changed between its read and the write.
    #[error("the pointer changed since it was read (another activation or rollback won the race); look at `qualcache fleet status` and try again")]
    Raced,
    /// A downloaded generation failed its checks.
    #[error("generation {generation} refused: {reason}")]
    Refused {
        /// Which.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// The generation is not in the store.
    #[error("generation {0} is not published (no generations/{0}.json in the store)")]
    NotPublished(u64),
    /// Too few replicas have the generation ready.
    #[error("generation {generation}: {ready} of {replicas} replicas report it ready, {needed} needed ([fleet] min_ready_replicas); wait for them, or --force")]
    NotReady {
        /// Which.
        generation: u64,
        /// Replicas that have it.
        ready: usize,
        /// Replicas that report at all.
        replicas: usize,
        /// Needed.
        needed: usize,
    },
    /// Rollback without an earlier generation.
    #[error("the pointer names no earlier generation to roll back to")]
    NoPrevious,
    /// Local I/O (the snapshot file being published or downloaded).
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The error (in the message, not repeated as a cause).
        error: std::io::Error,
    },
}

impl FleetError {
    fn store(what: impl Into<String>) -> impl FnOnce(object_store::Error) -> FleetError {
        let what = what.into();
        move |error| FleetError::Store { what, error }
    }
}

/// A generation's manifest: what a replica checks a download against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The generation (also in the snapshot's header).
    pub generation: u64,
    /// The file's length in bytes.
    pub size: u64,
    /// `blake3:<hex>` of the whole file.
    pub checksum: String,
    /// Where it was built from (a description, no secrets).
    pub source: String,
    /// The source's version (change counter, CSV fingerprint) at build time.
    pub source_version: u64,
    /// When the snapshot was built (RFC 3339).
    pub created_at: String,
    /// When it was published (RFC 3339).
    pub published_at: String,
    /// Fingerprint of the card key its digests were made with (hex).
    pub card_key_id: String,
    /// Qualification records.
    pub records: u64,
    /// Persons.
    pub persons: u64,
}

/// `current.json`: the generation every replica serves, from when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pointer {
    /// The generation to serve.
    pub generation: u64,
    /// From when (RFC 3339); replicas switch at that instant.
    pub activate_at: String,
    /// The generations it named before, oldest first (for rollback).
    #[serde(default)]
    pub previous: Vec<u64>,
    /// When it was written (RFC 3339).
    pub written_at: String,
}

impl Pointer {
    /// `activate_at` as a time.
    pub fn activate_time(&self) -> Result<OffsetDateTime, FleetError> {
        OffsetDateTime::parse(&self.activate_at, &Rfc3339).map_err(|e| FleetError::Malformed {
            object: POINTER.into(),
            kind: "pointer",
            reason: format!("activate_at {:?}: {e}", self.activate_at),
        })
    }

    /// The pointer that moves from `self` (if any) to `generation` at `at`.
    pub fn next(current: Option<&Pointer>, generation: u64, at: OffsetDateTime) -> Pointer {
        let mut previous = current.map(|p| p.previous.clone()).unwrap_or_default();
        if let Some(p) = current {
            if p.generation != generation {
                previous.push(p.generation);
            }
        }
        let excess = previous.len().saturating_sub(HISTORY);
        previous.drain(..excess);
        Pointer {
            generation,
            activate_at: rfc3339(at),
            previous,
            written_at: rfc3339(OffsetDateTime::now_utc()),
        }
    }

    /// The pointer back to the generation named before this one, at `at`;
    /// `None` if there was none.
    pub fn rolled_back(&self, at: OffsetDateTime) -> Option<Pointer> {
        let mut previous = self.previous.clone();
        let generation = previous.pop()?;
        Some(Pointer {
            generation,
            activate_at: rfc3339(at),
            previous,
            written_at: rfc3339(OffsetDateTime::now_utc()),
        })
    }
}

/// A replica's report, `replicas/<id>.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// The replica's id (`[fleet] replica_id`).
    pub replica_id: String,
    /// qualcached's version.
    pub version: String,
    /// The generation it serves.
    pub serving: Option<u64>,
    /// Since when (RFC 3339, milliseconds).
    pub serving_since: Option<String>,
    /// The pointer's generation as last read.
    pub pointer: Option<u64>,
    /// The pointer's generation when this replica cannot serve it yet
    /// (not downloaded or not verified): it keeps the older one.
    pub waiting_for: Option<u64>,
    /// Generations verified and on disk, ready to serve.
    pub ready: Vec<u64>,
    /// Generations refused, with why (a checksum or check failed).
    pub refused: Vec<Refusal>,
    /// The last error talking to the store, if the last try failed.
    pub last_error: Option<String>,
    /// When it was written (RFC 3339, milliseconds).
    pub updated_at: String,
}

/// A generation a replica refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Which.
    pub generation: u64,
    /// Why.
    pub reason: String,
}

/// The version of the pointer that was read, for the conditional write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PointerVersion(UpdateVersion);

/// A time as RFC 3339 (UTC, to the millisecond).
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t
        .replace_nanosecond(t.millisecond() as u32 * 1_000_000)
        .unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

/// Parses an RFC 3339 time (`--at`).
pub fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|e| format!("{text:?} is not an RFC 3339 time (2026-12-05T09:00:00Z): {e}"))
}

/// An open fleet store.
#[derive(Debug, Clone)]
pub struct Fleet {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// The URL, for messages (holds no secret).
    url: String,
    /// For a local directory: where the pointer's lock file lives (a
    /// local store has no conditional put; a lock stands in for it).
    local_root: Option<std::path::PathBuf>,
}

impl Fleet {
    /// Opens the store `settings` name (nothing is sent yet).
    pub fn open(settings: &StoreSettings) -> Result<Fleet, FleetError> {
        let (store, prefix, local_root) = settings.open()?;
        Ok(Fleet {
            store,
            prefix,
            url: settings.url.clone(),
            local_root,
        })
    }

    /// The store's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, rel: &str) -> ObjectPath {
        if self.prefix.as_ref().is_empty() {
            ObjectPath::from(rel)
        } else {
            ObjectPath::from(format!("{}/{rel}", self.prefix))
        }
    }

    fn data_path(&self, generation: u64) -> ObjectPath {
        self.path(&format!("generations/{generation}.qcs"))
    }

    fn manifest_path(&self, generation: u64) -> ObjectPath {
        self.path(&format!("generations/{generation}.json"))
    }

    /// Reads a small JSON object; `None` when it does not exist.
    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        path: &ObjectPath,
        kind: &'static str,
    ) -> Result<Option<(T, UpdateVersion)>, FleetError> {
        let got = match self.store.get(path).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(FleetError::store(format!("reading {path}"))(e)),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        let bytes = got
            .bytes()
            .await
            .map_err(FleetError::store(format!("reading {path}")))?;
        let value = serde_json::from_slice(&bytes).map_err(|e| FleetError::Malformed {
            object: path.to_string(),
            kind,
            reason: e.to_string(),
        })?;
        Ok(Some((value, version)))
    }

    fn json<T: Serialize>(value: &T) -> PutPayload {
        let mut text = serde_json::to_vec_pretty(value).unwrap_or_default();
        text.push(b'\n');
        PutPayload::from(text)
    }

    /// The objects under `dir` (relative to the prefix).
    async fn list(&self, dir: &str) -> Result<Vec<object_store::ObjectMeta>, FleetError> {
        use futures_util::TryStreamExt;
        let dir = self.path(dir);
        self.store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(FleetError::store(format!("listing {dir}")))
    }

    /// The manifest of `generation`, if it is published.
    pub async fn manifest(&self, generation: u64) -> Result<Option<Manifest>, FleetError> {
        Ok(self
            .get_json(&self.manifest_path(generation), "manifest")
            .await?
            .map(|(m, _)| m))
    }

    /// The generations published (those with a manifest), ascending.
    pub async fn generations(&self) -> Result<Vec<u64>, FleetError> {
        let listed = self.list("generations").await?;
        let mut gens: Vec<u64> = listed
            .iter()
            .filter_map(|m| m.location.filename()?.strip_suffix(".json")?.parse().ok())
            .collect();
        gens.sort_unstable();
        Ok(gens)
    }

    /// The published generations' manifests, ascending.
    pub async fn manifests(&self) -> Result<Vec<Manifest>, FleetError> {
        let mut out = Vec::new();
        for g in self.generations().await? {
            out.extend(self.manifest(g).await?);
        }
        Ok(out)
    }

    /// The pointer and its version, if one was ever written.
    pub async fn pointer(&self) -> Result<Option<(Pointer, PointerVersion)>, FleetError> {
        Ok(self
            .get_json(&self.path(POINTER), "pointer")
            .await?
            .map(|(p, v)| (p, PointerVersion(v))))
    }

    /// Writes the pointer if it is still the version `read` (`None`: if
    /// there is none yet); [`FleetError::Raced`] otherwise.
    pub async fn set_pointer(
        &self,
        pointer: &Pointer,
        read: Option<&PointerVersion>,
    ) -> Result<(), FleetError> {
        let path = self.path(POINTER);
        if let Some(root) = &self.local_root {
            return self.set_local_pointer(root, pointer, read).await;
        }
        let mode = match read {
            None => PutMode::Create,
            Some(v) => PutMode::Update(v.0.clone()),
        };
        match self
            .store
            .put_opts(&path, Self::json(pointer), PutOptions::from(mode))
            .await
        {
            Ok(_) => Ok(()),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Err(FleetError::Raced),
            Err(e) => Err(FleetError::store(format!("writing {path}"))(e)),
        }
    }

    /// A local directory has no conditional put: the compare and the
    /// write are done under an exclusive lock on `current.json.lock`.
    async fn set_local_pointer(
        &self,
        root: &std::path::Path,
        pointer: &Pointer,
        read: Option<&PointerVersion>,
    ) -> Result<(), FleetError> {
        let lock_path = root.join("current.json.lock");
        let io = |e| FleetError::Io {
            path: lock_path.display().to_string(),
            error: e,
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        lock.lock().map_err(io)?;
        let now = self.pointer().await?.map(|(_, v)| v);
        if now.as_ref() != read {
            return Err(FleetError::Raced);
        }
        let path = self.path(POINTER);
        self.store
            .put(&path, Self::json(pointer))
            .await
            .map_err(FleetError::store(format!("writing {path}")))?;
        drop(lock);
        Ok(())
    }

    /// Writes `replicas/<id>.json`.
    pub async fn write_report(&self, report: &Report) -> Result<(), FleetError> {
        let path = self.path(&format!("replicas/{}.json", report.replica_id));
        self.store
            .put(&path, Self::json(report))
            .await
            .map(|_| ())
            .map_err(FleetError::store(format!("writing {path}")))
    }

    /// Every replica's last report, by id.
    pub async fn reports(&self) -> Result<Vec<Report>, FleetError> {
        let listed = self.list("replicas").await?;
        let mut out = Vec::new();
        for m in listed {
            if m.location.extension() != Some("json") {
                continue;
            }
            if let Some((r, _)) = self
                .get_json::<Report>(&m.location, "replica report")
                .await?
            {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.replica_id.cmp(&b.replica_id));
        Ok(out)
    }
}

/// Moves the pointer to `generation` at `at` (`fleet activate`):
/// refused unless the generation is published and at least `min_ready`
/// replicas report it ready (0: no count, `--force`), and written only
/// if nobody moved the pointer since it was read here.
pub async fn activate(
    fleet: &Fleet,
    generation: u64,
    at: OffsetDateTime,
    min_ready: usize,
) -> Result<Pointer, FleetError> {
    if fleet.manifest(generation).await?.is_none() {
        return Err(FleetError::NotPublished(generation));
    }
    let read = fleet.pointer().await?;
    check_ready(fleet, generation, min_ready).await?;
    let next = Pointer::next(read.as_ref().map(|(p, _)| p), generation, at);
    fleet
        .set_pointer(&next, read.as_ref().map(|(_, v)| v))
        .await?;
    Ok(next)
}

/// Moves the pointer back to the generation it named before, at `at`
/// (`fleet rollback`), with [`activate`]'s checks.
pub async fn rollback(
    fleet: &Fleet,
    at: OffsetDateTime,
    min_ready: usize,
) -> Result<Pointer, FleetError> {
    let (current, version) = fleet.pointer().await?.ok_or(FleetError::NoPrevious)?;
    let next = current.rolled_back(at).ok_or(FleetError::NoPrevious)?;
    check_ready(fleet, next.generation, min_ready).await?;
    fleet.set_pointer(&next, Some(&version)).await?;
    Ok(next)
}

async fn check_ready(fleet: &Fleet, generation: u64, min_ready: usize) -> Result<(), FleetError> {
    if min_ready == 0 {
        return Ok(());
    }
    let reports = fleet.reports().await?;
    let ready = reports
        .iter()
        .filter(|r| r.ready.contains(&generation))
        .count();
    if ready < min_ready {
        return Err(FleetError::NotReady {
            generation,
            ready,
            replicas: reports.len(),
            needed: min_ready,
        });
    }
    Ok(())
}

/// Checks a replica id: it names an object, so letters, digits, `-`,
/// `_` and `.` only, 1 to 64 of them.
pub fn check_replica_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{id:?}: 1 to 64 letters, digits, '-', '_' or '.', not starting with '.'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pointer_remembers_what_it_named_for_rollback() {
        let t = OffsetDateTime::UNIX_EPOCH;
        let p1 = Pointer::next(None, 1, t);
        let p2 = Pointer::next(Some(&p1), 2, t);
        let p2_again = Pointer::next(Some(&p2), 2, t);
        assert_eq!(p2_again.previous, vec![1]);
        let p3 = Pointer::next(Some(&p2_again), 3, t);
        assert_eq!(p3.previous, vec![1, 2]);
        let back = p3.rolled_back(t).unwrap();
        assert_eq!((back.generation, back.previous.clone()), (2, vec![1]));
        let back = back.rolled_back(t).unwrap();
        assert_eq!(back.generation, 1);
        assert!(back.rolled_back(t).is_none());
        let mut p = p1;
        for g in 2..40 {
            p = Pointer::next(Some(&p), g, t);
        }
        assert_eq!(p.previous.len(), HISTORY);
        assert_eq!(p.previous.last(), Some(&38));
    }

    /// A local directory store: publish once, activate, and a racing
    /// write of the pointer refused (the lock stands in for the
    /// conditional put).
    #[tokio::test]
    async fn a_local_store_publishes_once_and_refuses_a_racing_pointer() {
        use crate::model::CardKey;
        let dir = tempfile::tempdir().unwrap();
        let g = crate::gen::generate(&crate::gen::GenOptions {
            progress: Default::default(),
            records: 300,
            seed: 2,
            out: dir.path().join("data"),
            probes: 10,
            as_of: "20261101".parse().unwrap(),
            card_key: CardKey::demo(),
        })
        .unwrap();
        let opts = crate::build::BuildOptions {
            progress: Default::default(),
            skip_invalid: false,
            card_key_id: CardKey::demo().id(),
        };
        let snaps = dir.path().join("snaps");
        crate::build::build_from_csv(&g.csv, &snaps, &opts, |_| {}).unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let fleet = Fleet::open(&StoreSettings::from_url(&url)).unwrap();
        let file = crate::snapshot::write::snapshot_path(&snaps, 1);
        let published = publish(&fleet, &file, "test").await.unwrap();
        assert_eq!(published.manifest.generation, 1);
        assert!(matches!(
            publish(&fleet, &file, "test").await,
            Err(FleetError::Exists(1))
        ));
        assert_eq!(fleet.generations().await.unwrap(), vec![1]);
        assert!(matches!(
            activate(&fleet, 2, OffsetDateTime::now_utc(), 0).await,
            Err(FleetError::NotPublished(2))
        ));
        assert!(matches!(
            activate(&fleet, 1, OffsetDateTime::now_utc(), 1).await,
            Err(FleetError::NotReady { ready: 0, .. })
        ));
        activate(&fleet, 1, OffsetDateTime::now_utc(), 0)
            .await
            .unwrap();
        let (p, v) = fleet.pointer().await.unwrap().unwrap();
        let mut a = p.clone();
        a.activate_at = rfc3339(OffsetDateTime::UNIX_EPOCH);
        fleet.set_pointer(&a, Some(&v)).await.unwrap();
        assert!(matches!(
            fleet.set_pointer(&p, Some(&v)).await,
            Err(FleetError::Raced)
        ));
        // Downloaded into a replica's directory and checked.
        let replica = dir.path().join("replica");
        let manifest = fleet.manifest(1).await.unwrap().unwrap();
        let got = pull(&fleet, &manifest, &replica, CardKey::demo().id(), &|_| {})
            .await
            .unwrap();
        assert_eq!(std::fs::read(got).unwrap(), std::fs::read(&file).unwrap());
        // Another card key's replica refuses it and keeps nothing.
        let other = dir.path().join("other");
        let refused = pull(&fleet, &manifest, &other, 42, &|_| {}).await;
        assert!(
            matches!(&refused, Err(FleetError::Refused { reason, .. }) if reason.contains("card key")),
            "{refused:?}"
        );
        assert!(crate::snapshot::list_generations(&other)
            .unwrap()
            .is_empty());
    }
}

//! `qualcache snapshot publish`: a verified snapshot file uploaded to the
//! fleet's store, then its manifest.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload};
use time::OffsetDateTime;

use super::{rfc3339, Fleet, FleetError, Manifest};
use crate::snapshot::Snapshot;

/// Bytes per uploaded part (S3 wants at least 5 MiB but for the last).
pub(super) const PART: usize = 16 << 20;
/// Parts uploaded at once.
const PARTS_IN_FLIGHT: usize = 8;

/// What [`publish`] did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Published {
    /// The manifest written.
    pub manifest: Manifest,
    /// Seconds from the start of the upload to the manifest.
    pub seconds: f64,
    /// Upload rate, MB/s (10^6 bytes).
    pub mb_per_s: f64,
}

/// A range of a snapshot's mapped bytes, handed to the HTTP client as
/// they are (no copy): the snapshot stays mapped while a part uses it.
struct Slice {
    snapshot: Arc<Snapshot>,
    range: Range<usize>,
}

impl AsRef<[u8]> for Slice {
    fn as_ref(&self) -> &[u8] {
        &self.snapshot.file_bytes()[self.range.clone()]
    }
}

fn slice(snapshot: &Arc<Snapshot>, range: Range<usize>) -> PutPayload {
    PutPayload::from(Bytes::from_owner(Slice {
        snapshot: snapshot.clone(),
        range,
    }))
}

/// Publishes the snapshot `file` (which must pass the daemon's open
/// checks) as its generation: the file is uploaded from its mapping
/// (multipart above 16 MiB, 8 parts at a time, never read whole into
/// memory), then the manifest is created, create-only, so a generation
/// is never replaced ([`FleetError::Exists`]). `source` describes where
/// it was built from. A data object left by an interrupted publish (no
/// manifest) is uploaded over.
pub async fn publish(fleet: &Fleet, file: &Path, source: &str) -> Result<Published, FleetError> {
    let unusable = |reason: String| FleetError::Io {
        path: file.display().to_string(),
        error: std::io::Error::other(reason),
    };
    let path = file.to_path_buf();
    let snapshot = tokio::task::spawn_blocking(move || Snapshot::open(&path))
        .await
        .map_err(|e| unusable(e.to_string()))?
        .map_err(|e| unusable(format!("not a usable snapshot: {e}")))?;
    let snapshot = Arc::new(snapshot);
    let header = snapshot.header().clone();
    let generation = header.generation;
    if fleet.manifest(generation).await?.is_some() {
        return Err(FleetError::Exists(generation));
    }
    let hashed = snapshot.clone();
    let checksum = tokio::task::spawn_blocking(move || {
        format!("blake3:{}", blake3::hash(hashed.file_bytes()).to_hex())
    })
    .await
    .map_err(|e| unusable(e.to_string()))?;

    let started = Instant::now();
    let size = snapshot.file_bytes().len();
    let data = fleet.data_path(generation);
    let what = format!("uploading {data}");
    let uploaded = if size <= PART {
        fleet
            .store
            .put(&data, slice(&snapshot, 0..size))
            .await
            .map_err(FleetError::store(what.clone()))?
    } else {
        let mut upload = fleet
            .store
            .put_multipart(&data)
            .await
            .map_err(FleetError::store(what.clone()))?;
        let mut in_flight = FuturesUnordered::new();
        let mut failed = None;
        for start in (0..size).step_by(PART) {
            if in_flight.len() >= PARTS_IN_FLIGHT {
                if let Some(Err(e)) = in_flight.next().await {
                    failed = Some(e);
                    break;
                }
            }
            in_flight.push(upload.put_part(slice(&snapshot, start..(start + PART).min(size))));
        }
        while failed.is_none() {
            match in_flight.next().await {
                Some(Err(e)) => failed = Some(e),
                Some(Ok(())) => {}
                None => break,
            }
        }
        if let Some(e) = failed {
            drop(in_flight);
            let _ = upload.abort().await;
            return Err(FleetError::store(what)(e));
        }
        upload
            .complete()
            .await
            .map_err(FleetError::store(what.clone()))?
    };
    let created = OffsetDateTime::from_unix_timestamp(header.created_at_unix as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let manifest = Manifest {
        generation,
        size: size as u64,
        checksum,
        source: source.to_string(),
        source_version: header.source_version,
        created_at: rfc3339(created),
        published_at: rfc3339(OffsetDateTime::now_utc()),
        card_key_id: format!("{:016x}", header.card_key_id),
        records: header.records,
        persons: header.persons,
    };
    let manifest_path = fleet.manifest_path(generation);
    match fleet
        .store
        .put_opts(
            &manifest_path,
            Fleet::json(&manifest),
            PutOptions::from(PutMode::Create),
        )
        .await
    {
        Ok(_) => {}
        Err(
            object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. },
        ) => return Err(FleetError::Exists(generation)),
        Err(e) => return Err(FleetError::store(format!("writing {manifest_path}"))(e)),
    }
    // Another publisher of the same generation number may have uploaded
    // over the data between our upload and our manifest: then the
    // manifest does not describe the object, and every replica would
    // refuse it. Say so now.
    let now = fleet
        .store
        .head(&data)
        .await
        .map_err(FleetError::store(format!("checking {data}")))?;
    if uploaded.e_tag.is_some() && now.e_tag != uploaded.e_tag {
        return Err(FleetError::Refused {
            generation,
            reason: format!(
                "{data} was replaced by another upload after ours; the manifest does not describe it (replicas will refuse it)"
            ),
        });
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Published {
        manifest,
        seconds,
        mb_per_s: size as f64 / 1e6 / seconds.max(1e-9),
    })
}

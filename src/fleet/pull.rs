//! A replica's download of one published generation: ranged reads in
//! parallel into a temporary file in the snapshot directory, checked
//! against the manifest and by the daemon's open checks, then linked in.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use super::publish::PART;
use super::{Fleet, FleetError, Manifest};
use crate::snapshot::write::{link_generation, temp_path, SNAPSHOT_MODE};
use crate::snapshot::Snapshot;

/// Ranges read at once.
const RANGES_IN_FLIGHT: usize = 4;

/// Downloads `manifest`'s generation into `dir` and links it in as
/// `<generation>.qcs` once its size and checksum match the manifest,
/// it passes [`Snapshot::open`]'s checks, holds that generation, and was
/// built with the card key `card_key_id`; otherwise
/// [`FleetError::Refused`] and nothing is left in `dir`. `progress` is
/// told each range's bytes as they land. A generation already in `dir` is
/// left as it is.
pub async fn pull(
    fleet: &Fleet,
    manifest: &Manifest,
    dir: &Path,
    card_key_id: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PathBuf, FleetError> {
    let generation = manifest.generation;
    let refused = |reason: String| FleetError::Refused { generation, reason };
    let data = fleet.data_path(generation);
    let meta = fleet
        .store
        .head(&data)
        .await
        .map_err(FleetError::store(format!("reading {data}")))?;
    if meta.size != manifest.size {
        return Err(refused(format!(
            "{data} holds {} bytes, its manifest says {}",
            meta.size, manifest.size
        )));
    }
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let tmp = temp_path(dir);
    let result = download_and_check(fleet, manifest, dir, &tmp, card_key_id, progress).await;
    let _ = std::fs::remove_file(&tmp);
    result
}

fn io(path: &Path, error: std::io::Error) -> FleetError {
    FleetError::Io {
        path: path.display().to_string(),
        error,
    }
}

async fn download_and_check(
    fleet: &Fleet,
    manifest: &Manifest,
    dir: &Path,
    tmp: &Path,
    card_key_id: u64,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<PathBuf, FleetError> {
    let generation = manifest.generation;
    let refused = |reason: String| FleetError::Refused { generation, reason };
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create_new(true)
        .mode(SNAPSHOT_MODE)
        .open(tmp)
        .map_err(|e| io(tmp, e))?;
    file.set_len(manifest.size).map_err(|e| io(tmp, e))?;
    let file = Arc::new(file);
    let data = fleet.data_path(generation);
    let ranges = (0..manifest.size)
        .step_by(PART)
        .map(|start| start..(start + PART as u64).min(manifest.size));
    stream::iter(ranges)
        .map(|range| {
            let (data, file) = (&data, file.clone());
            async move {
                let bytes = fleet
                    .store
                    .get_range(data, range.clone())
                    .await
                    .map_err(FleetError::store(format!("reading {data} at {range:?}")))?;
                if bytes.len() as u64 != range.end - range.start {
                    return Err(FleetError::Refused {
                        generation,
                        reason: format!(
                            "{data} answered {} bytes for range {range:?}",
                            bytes.len()
                        ),
                    });
                }
                let len = bytes.len() as u64;
                tokio::task::spawn_blocking(move || file.write_all_at(&bytes, range.start))
                    .await
                    .map_err(|e| io(tmp, std::io::Error::other(e)))?
                    .map_err(|e| io(tmp, e))?;
                progress(len);
                Ok(())
            }
        })
        .buffer_unordered(RANGES_IN_FLIGHT)
        .try_collect::<()>()
        .await?;
    let (path, file_for_hash) = (tmp.to_path_buf(), file.clone());
    let checksum = tokio::task::spawn_blocking(move || {
        file_for_hash.sync_all()?;
        let mut hasher = blake3::Hasher::new();
        // The parallel writes were positioned: the cursor is at 0.
        hasher.update_reader(std::io::BufReader::with_capacity(1 << 20, &*file_for_hash))?;
        Ok::<_, std::io::Error>(format!("blake3:{}", hasher.finalize().to_hex()))
    })
    .await
    .map_err(|e| io(&path, std::io::Error::other(e)))?
    .map_err(|e| io(&path, e))?;
    if checksum != manifest.checksum {
        return Err(refused(format!(
            "its bytes do not match the manifest's checksum ({checksum}, manifest {})",
            manifest.checksum
        )));
    }
    let opened = tokio::task::spawn_blocking(move || Snapshot::open(&path))
        .await
        .map_err(|e| io(tmp, std::io::Error::other(e)))?
        .map_err(|e| refused(format!("the snapshot's own checks failed: {e}")))?;
    let header = opened.header();
    if header.generation != generation {
        return Err(refused(format!(
            "the file holds generation {}",
            header.generation
        )));
    }
    if header.card_key_id != card_key_id {
        return Err(refused(
            "it was built with another card key than this replica's".into(),
        ));
    }
    drop(opened);
    match link_generation(dir, tmp, generation) {
        Ok(path) => Ok(path),
        Err(crate::snapshot::SnapshotError::Io { error, .. })
            if error.kind() == std::io::ErrorKind::AlreadyExists =>
        {
            Ok(crate::snapshot::write::snapshot_path(dir, generation))
        }
        Err(e) => Err(io(dir, std::io::Error::other(e.to_string()))),
    }
}

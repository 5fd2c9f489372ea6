//! The sticky snapshot: every table written to one file at graceful shutdown and read at
//! start, so a single instance keeps its stickiness across a restart.
//!
//! Format: `"MQGSNAP\0"`, format version (u16), write time (unix ms, u64), then peer
//! frames (UPDATES per cluster, then SYNC_END with the entry count as a trailer). Each
//! entry keeps its idle time, and the time spent between writing and reading is added
//! to it, so entries expire when they would have without the restart. The file (mode
//! 0600) is written to a new temporary file with a random name, synced, then renamed
//! over the old one: a crash in the middle leaves the previous snapshot intact. A missing file is normal (first start);
//! a damaged one is logged and what could be read before the damage is kept.

use super::frame::{self, Frame, Interner};
use crate::host::Host;
use crate::sticky::SHARDS;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAGIC: &[u8; 8] = b"MQGSNAP\0";
const FORMAT: u16 = 1;
const HEADER: usize = 8 + 2 + 8;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: not an mqgate snapshot")]
    Magic(PathBuf),
    #[error("{path}: snapshot format {found}, this build reads format {FORMAT}")]
    Format { path: PathBuf, found: u16 },
    #[error("{path}: damaged after {entries} entries: {why}")]
    Damaged {
        path: PathBuf,
        entries: u64,
        why: String,
    },
}

/// Encode every table of the gateway.
pub fn encode(host: &Host) -> (Vec<u8>, u64) {
    let mut out = Vec::with_capacity(HEADER + 1024);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_be_bytes());
    out.extend_from_slice(&crate::sticky::now_ms().to_be_bytes());
    let clusters = host.clusters_sorted();
    let mut total = 0u64;
    for c in clusters {
        for shard in 0..SHARDS {
            let mut enc = frame::UpdatesWriter::new(&c.name, frame::SYNC_BATCH);
            c.sticky.for_each_in_shard(shard, |u| {
                enc.push(&mut out, &u);
                total += 1;
            });
            enc.flush(&mut out);
        }
    }
    // Stored subscriptions after every sticky entry: a build that does not know SUBS
    // frames still loads all the entries, then reports the snapshot as damaged.
    super::link::encode_all_subs(host, &mut out);
    frame::encode(&Frame::SyncEnd { entries: total }, &mut out);
    (out, total)
}

/// Write `bytes` to `path` atomically: a temporary file with a random name in the same
/// directory, created exclusively (`O_CREAT | O_EXCL | O_NOFOLLOW`, so a symlink or file
/// planted at that name is never followed or reused) with mode 0600 whatever the umask
/// (sticky keys are client ids or user names), written, fsynced, renamed over `path`
/// (which replaces a symlink there rather than writing through it), and the directory
/// fsynced so that the rename survives a crash.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let io = |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .map_err(|e| context(e, format_args!("creating the directory {}", dir.display())))
        .map_err(io)?;
    let (tmp, mut f) = create_temp(dir, path).map_err(io)?;
    let result = (|| {
        f.write_all(bytes)
            .map_err(|e| context(e, format_args!("writing {}", tmp.display())))?;
        f.sync_all()
            .map_err(|e| context(e, format_args!("syncing {}", tmp.display())))?;
        drop(f);
        std::fs::rename(&tmp, path)
            .map_err(|e| context(e, format_args!("renaming {} into place", tmp.display())))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| context(e, format_args!("syncing the directory {}", dir.display())))
    })();
    if result.is_err() {
        // Ours (created exclusively): removing it cannot remove anything planted.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// `e` with what was being done, keeping its kind.
fn context(e: std::io::Error, what: std::fmt::Arguments<'_>) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Create a new temporary file next to `path`: `.NAME.RANDOM.tmp`, mode 0600, never an
/// existing file or a symlink (another random name is tried if the name is taken).
fn create_temp(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let mut last = None;
    for _ in 0..16 {
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(context(e, format_args!("creating {}", tmp.display()))),
        }
    }
    let e = last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AlreadyExists));
    Err(context(
        e,
        format_args!("creating a temporary file in {}", dir.display()),
    ))
}

/// Write the snapshot (shutdown). Errors are logged: shutdown goes on.
pub async fn save(host: &Arc<Host>, path: &Path) {
    let host2 = host.clone();
    let path2 = path.to_path_buf();
    let done = tokio::task::spawn_blocking(move || {
        let (bytes, n) = encode(&host2);
        write_atomic(&path2, &bytes).map(|()| (n, bytes.len()))
    })
    .await;
    match done {
        Ok(Ok((entries, bytes))) => {
            tracing::info!(file = %path.display(), entries, bytes, "sticky snapshot written")
        }
        Ok(Err(e)) => tracing::error!("sticky snapshot not written: {e}"),
        Err(e) => tracing::error!(file = %path.display(), "sticky snapshot not written: {e}"),
    }
}

/// Merge a snapshot's bytes into the gateway's tables; returns how many entries were
/// read. Entries of clusters the config no longer has are skipped.
pub fn decode_into(host: &Host, path: &Path, bytes: &[u8]) -> Result<u64, SnapshotError> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(SnapshotError::Magic(path.to_path_buf()));
    }
    let found = u16::from_be_bytes([bytes[8], bytes[9]]);
    if found != FORMAT {
        return Err(SnapshotError::Format {
            path: path.to_path_buf(),
            found,
        });
    }
    let mut written = [0u8; 8];
    written.copy_from_slice(&bytes[10..18]);
    let since = crate::sticky::now_ms().saturating_sub(u64::from_be_bytes(written));
    let mut rest = &bytes[HEADER..];
    let mut interner = Interner::default();
    let mut entries = 0u64;
    let damaged = |entries, why: String| SnapshotError::Damaged {
        path: path.to_path_buf(),
        entries,
        why,
    };
    loop {
        match frame::decode_lazy(rest, &mut interner) {
            Ok(Some((Frame::Batch(b), n))) => {
                rest = &rest[n..];
                entries += b.len() as u64;
                if let Some(c) = host.cluster(&b.cluster) {
                    c.sticky.merge_many(b.iter().map(|mut u| {
                        u.idle_ms = u.idle_ms.saturating_add(since);
                        u
                    }));
                }
            }
            Ok(Some((Frame::Subs { cluster, clients }, n))) => {
                rest = &rest[n..];
                if let Some(c) = host.cluster(&cluster) {
                    for (key, stamp, subs) in &clients {
                        c.subs.apply_remote(key, *stamp, subs);
                    }
                }
            }
            Ok(Some((Frame::SyncEnd { entries: total }, _))) => {
                return if total == entries {
                    Ok(entries)
                } else {
                    Err(damaged(entries, format!("trailer says {total} entries")))
                };
            }
            Ok(Some((f, _))) => {
                return Err(damaged(
                    entries,
                    super::link::LinkError::unexpected(&f).to_string(),
                ))
            }
            Ok(None) => return Err(damaged(entries, "truncated".into())),
            Err(e) => return Err(damaged(entries, e.to_string())),
        }
    }
}

/// Load the snapshot at start. A missing file is normal; a damaged one is logged.
pub async fn load(host: &Arc<Host>, path: &Path) {
    let bytes = match tokio::fs::read(path).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(file = %path.display(), "no sticky snapshot yet");
            return;
        }
        Err(e) => {
            tracing::warn!(file = %path.display(), "sticky snapshot not loaded: {e}");
            return;
        }
    };
    match decode_into(host, path, &bytes) {
        Ok(entries) => tracing::info!(file = %path.display(), entries, "sticky snapshot loaded"),
        Err(e) => tracing::warn!("sticky snapshot partly loaded: {e}"),
    }
    host.refresh_sticky_gauges();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    /// A symlink planted where the snapshot used to write its temporary file (`.tmp.<pid>`,
    /// predictable) or at the snapshot path itself is never followed: the file it points
    /// at is left alone and the snapshot is a regular file of mode 0600 whatever the umask.
    #[test]
    fn write_atomic_follows_no_planted_symlink_and_writes_mode_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("write victim");
        let path = dir.path().join("sticky.bin");
        let old_tmp = dir
            .path()
            .join(format!("sticky.bin.tmp.{}", std::process::id()));
        symlink(&victim, &old_tmp).expect("plant symlink at the old temp name");

        write_atomic(&path, b"first").expect("first write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert!(std::fs::symlink_metadata(&path)
            .expect("snapshot")
            .file_type()
            .is_file());
        assert_eq!(std::fs::read(&path).expect("snapshot"), b"first");
        assert_eq!(mode(&path), 0o600, "snapshot mode");

        // A symlink at the snapshot path is replaced, not written through.
        std::fs::remove_file(&path).expect("remove");
        symlink(&victim, &path).expect("plant symlink at the snapshot path");
        write_atomic(&path, b"second").expect("second write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious");
        assert_eq!(std::fs::read(&path).expect("snapshot"), b"second");
        assert_eq!(mode(&path), 0o600, "snapshot mode");

        // An older snapshot with a looser mode is replaced by a 0600 one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&path, b"third").expect("third write");
        assert_eq!(mode(&path), 0o600, "snapshot mode");

        // Nothing is left behind but the snapshot, the victim and the planted link.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut want = vec![
            "sticky.bin".to_string(),
            format!("sticky.bin.tmp.{}", std::process::id()),
            "victim".to_string(),
        ];
        want.sort();
        assert_eq!(names, want);
    }
}

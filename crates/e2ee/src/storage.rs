//! Where a device keeps its MLS group state: in memory, or in a directory so that a client
//! survives a restart. Both sit behind mls-rs's `GroupStateStorage` trait.
//!
//! Only the newest epoch record is kept (forward secrecy: older epochs' secrets are deleted
//! as soon as MLS no longer needs them).

use std::path::{Path, PathBuf};

use mls_rs::storage_provider::in_memory::InMemoryGroupStateStorage;
use mls_rs_core::group::{EpochRecord, GroupState, GroupStateStorage};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Group state storage of a device.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum GroupStore {
    /// In memory only (tests, bots, the browser until its IndexedDB store lands).
    Memory(InMemoryGroupStateStorage),
    /// One directory per group under a root directory.
    Dir(DirStore),
}

impl GroupStore {
    /// A fresh in-memory store that keeps one prior epoch.
    pub fn memory() -> Self {
        let store = InMemoryGroupStateStorage::new();
        // `with_max_epoch_retention` only fails for 0.
        GroupStore::Memory(store.with_max_epoch_retention(1).unwrap_or_default())
    }

    /// A store under `root` (created if missing).
    pub fn dir(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|e| Error::Storage(format!("{root:?}: {e}")))?;
        Ok(GroupStore::Dir(DirStore { root }))
    }
}

/// Writes `data` to `path` readable and writable by its owner only (mode 0600 on Unix), through
/// a temporary file renamed over it, so a reader never sees half a key. For device identities
/// and group state: secrets that other users of the machine must not read.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Files under a root directory: `<root>/<group id hex>/state` and `.../epoch-<n>`.
#[derive(Clone, Debug)]
pub struct DirStore {
    root: PathBuf,
}

/// Errors of the directory store.
#[derive(Debug, thiserror::Error)]
#[error("group state storage: {0}")]
pub struct StoreError(String);

impl mls_rs_core::error::IntoAnyError for StoreError {
    fn into_dyn_error(
        self,
    ) -> core::result::Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

fn io(path: &Path, e: std::io::Error) -> StoreError {
    StoreError(format!("{}: {e}", path.display()))
}

impl DirStore {
    fn group_dir(&self, group_id: &[u8]) -> PathBuf {
        let hex: String = group_id.iter().map(|b| format!("{b:02x}")).collect();
        self.root.join(hex)
    }

    fn read(path: &Path) -> core::result::Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(Zeroizing::new(b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path, e)),
        }
    }

    fn write_atomic(path: &Path, data: &[u8]) -> core::result::Result<(), StoreError> {
        write_private(path, data).map_err(|e| io(path, e))
    }

    fn epochs(dir: &Path) -> core::result::Result<Vec<u64>, StoreError> {
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(dir, e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io(dir, e))?;
            if let Some(n) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_prefix("epoch-"))
                .and_then(|n| n.parse().ok())
            {
                out.push(n);
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

impl GroupStateStorage for DirStore {
    type Error = StoreError;

    fn state(
        &self,
        group_id: &[u8],
    ) -> core::result::Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        Self::read(&self.group_dir(group_id).join("state"))
    }

    fn epoch(
        &self,
        group_id: &[u8],
        epoch_id: u64,
    ) -> core::result::Result<Option<Zeroizing<Vec<u8>>>, StoreError> {
        Self::read(&self.group_dir(group_id).join(format!("epoch-{epoch_id}")))
    }

    fn write(
        &mut self,
        state: GroupState,
        epoch_inserts: Vec<EpochRecord>,
        epoch_updates: Vec<EpochRecord>,
    ) -> core::result::Result<(), StoreError> {
        let dir = self.group_dir(&state.id);
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        for rec in epoch_inserts.iter().chain(epoch_updates.iter()) {
            Self::write_atomic(&dir.join(format!("epoch-{}", rec.id)), &rec.data)?;
        }
        Self::write_atomic(&dir.join("state"), &state.data)?;
        // Keep only the newest epoch record.
        let epochs = Self::epochs(&dir)?;
        if let Some((_, older)) = epochs.split_last() {
            for e in older {
                let p = dir.join(format!("epoch-{e}"));
                std::fs::remove_file(&p).map_err(|e| io(&p, e))?;
            }
        }
        Ok(())
    }

    fn max_epoch_id(&self, group_id: &[u8]) -> core::result::Result<Option<u64>, StoreError> {
        Ok(Self::epochs(&self.group_dir(group_id))?.last().copied())
    }
}

/// Errors of [`GroupStore`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct GroupStoreError(String);

impl mls_rs_core::error::IntoAnyError for GroupStoreError {
    fn into_dyn_error(
        self,
    ) -> core::result::Result<Box<dyn std::error::Error + Send + Sync>, Self> {
        Ok(Box::new(self))
    }
}

fn wrap<E: std::fmt::Debug>(e: E) -> GroupStoreError {
    GroupStoreError(format!("{e:?}"))
}

impl GroupStateStorage for GroupStore {
    type Error = GroupStoreError;

    fn state(
        &self,
        group_id: &[u8],
    ) -> core::result::Result<Option<Zeroizing<Vec<u8>>>, Self::Error> {
        match self {
            GroupStore::Memory(m) => m.state(group_id).map_err(wrap),
            GroupStore::Dir(d) => d.state(group_id).map_err(wrap),
        }
    }

    fn epoch(
        &self,
        group_id: &[u8],
        epoch_id: u64,
    ) -> core::result::Result<Option<Zeroizing<Vec<u8>>>, Self::Error> {
        match self {
            GroupStore::Memory(m) => m.epoch(group_id, epoch_id).map_err(wrap),
            GroupStore::Dir(d) => d.epoch(group_id, epoch_id).map_err(wrap),
        }
    }

    fn write(
        &mut self,
        state: GroupState,
        epoch_inserts: Vec<EpochRecord>,
        epoch_updates: Vec<EpochRecord>,
    ) -> core::result::Result<(), Self::Error> {
        match self {
            GroupStore::Memory(m) => m.write(state, epoch_inserts, epoch_updates).map_err(wrap),
            GroupStore::Dir(d) => d.write(state, epoch_inserts, epoch_updates).map_err(wrap),
        }
    }

    fn max_epoch_id(&self, group_id: &[u8]) -> core::result::Result<Option<u64>, Self::Error> {
        match self {
            GroupStore::Memory(m) => m.max_epoch_id(group_id).map_err(wrap),
            GroupStore::Dir(d) => d.max_epoch_id(group_id).map_err(wrap),
        }
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_files_are_readable_by_their_owner_only_and_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("conclave-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("device.key");
        write_private(&path, b"first").unwrap();
        write_private(&path, b"second").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!path.with_extension("tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! The store's storage backend: redb's [`FileBackend`] behind a thin wrapper that can be told
//! to fail.
//!
//! In production the wrapper only forwards: every call, file locks included, goes to the
//! `FileBackend` of `queue.redb`, so the file, its locking and its crash behaviour are exactly
//! redb's. Fault tests give it a [`DiskFaults`] switch: while it is on, every call that may
//! allocate or make data durable (`write`, `set_len`, `sync_data`) fails with the injected
//! error, as a full disk (ENOSPC) would, and reads keep working. The store then goes through
//! the same failure and recovery as on a real full disk (see [`writer`](super::writer)).

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::backends::FileBackend;
use redb::{BackendError, StorageBackend};

use super::{lock, storage_error};
use crate::queue::QueueError;

/// A switch that makes the store's writes fail, for fault tests. Off when created.
#[derive(Debug, Default)]
pub struct DiskFaults {
    failing_writes: Mutex<Option<io::ErrorKind>>,
    injected: AtomicU64,
}

impl DiskFaults {
    /// A switch, off.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// From now on `write`, `set_len` and `sync_data` fail with an error of `kind`.
    pub fn fail_writes_with(&self, kind: io::ErrorKind) {
        *lock(&self.failing_writes) = Some(kind);
    }

    /// The disk is full: writes fail with [`io::ErrorKind::StorageFull`] (ENOSPC).
    pub fn disk_full(&self) {
        self.fail_writes_with(io::ErrorKind::StorageFull);
    }

    /// Writes reach the file again.
    pub fn clear(&self) {
        *lock(&self.failing_writes) = None;
    }

    /// How many calls failed because of this switch so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::Relaxed)
    }

    fn check_write(&self) -> io::Result<()> {
        let Some(kind) = *lock(&self.failing_writes) else {
            return Ok(());
        };
        self.injected.fetch_add(1, Ordering::Relaxed);
        Err(io::Error::new(
            kind,
            "injected fault: no space left on device",
        ))
    }
}

/// The backend the store opens `queue.redb` through.
#[derive(Debug)]
pub(super) struct StoreBackend {
    file: FileBackend,
    faults: Option<Arc<DiskFaults>>,
}

impl StoreBackend {
    /// Opens (creating when missing, mode 0600) the store file, as `Database::create` does.
    pub(super) fn open(path: &Path, faults: Option<Arc<DiskFaults>>) -> Result<Self, QueueError> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(super::permissions::FILE_MODE)
            .open(path)
            .map_err(super::io_error)?;
        let file = FileBackend::new(file).map_err(storage_error)?;
        Ok(Self { file, faults })
    }

    fn check_write(&self) -> io::Result<()> {
        match &self.faults {
            Some(faults) => faults.check_write(),
            None => Ok(()),
        }
    }
}

impl StorageBackend for StoreBackend {
    fn len(&self) -> io::Result<u64> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.check_write()?;
        self.file.set_len(len)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.check_write()?;
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.check_write()?;
        self.file.write(offset, data)
    }

    fn close(&self) -> io::Result<()> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_fail_only_while_the_switch_is_on_and_reads_keep_working() {
        let dir = tempfile::tempdir().expect("temp dir");
        let faults = DiskFaults::new();
        let backend = StoreBackend::open(&dir.path().join("file"), Some(Arc::clone(&faults)))
            .expect("opened");
        backend.write(0, b"kept").expect("written");
        faults.disk_full();
        for error in [
            backend.write(4, b"lost").expect_err("refused"),
            backend.set_len(4096).expect_err("refused"),
            backend.sync_data().expect_err("refused"),
        ] {
            assert_eq!(error.kind(), io::ErrorKind::StorageFull);
            assert_eq!(super::super::io_error(error), QueueError::Full);
        }
        assert_eq!(faults.injected(), 3);
        let mut read = [0; 4];
        backend.read(0, &mut read).expect("reads work");
        assert_eq!(&read, b"kept");
        assert_eq!(backend.len().expect("length"), 4, "nothing was written");
        faults.clear();
        backend.write(4, b"more").expect("written again");
        assert_eq!(backend.len().expect("length"), 8);
    }
}

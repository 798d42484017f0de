//! The open store: the redb handle shared by the reads and the writer thread, whether the
//! store is down after a storage failure, and how it is opened (again).
//!
//! States: **up** (a handle is installed; reads and writes use it) → **down** after a commit
//! failed on a storage error (full disk, i/o): the handle is dropped, because redb fails every
//! later operation of a handle that saw an i/o error (`PreviousIo`), and every read and write
//! fails at once with that error → **up** again when the writer thread reopened the file
//! (redb repairs it from its last committed transaction). Only the writer thread moves the
//! store between states; see [`writer`](super::writer) for the retries.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redb::{Database, DatabaseError, ReadableTable, Table};

use super::backend::{DiskFaults, StoreBackend};
use super::permissions::{check_private, create_private_dir};
use super::writer::Tables;
use super::{STORE_FILE_NAME, format, io_error, lock, storage_error};
use crate::queue::QueueError;

/// The store file, its handle and its health.
pub(super) struct StoreHandle {
    dir: PathBuf,
    path: PathBuf,
    faults: Option<Arc<DiskFaults>>,
    database: Mutex<Option<Arc<Database>>>,
    /// The storage failure the store is down for; `None` while up.
    failure: Mutex<Option<QueueError>>,
    /// Storage failures that took the store down since it was opened.
    failures: AtomicU64,
}

impl StoreHandle {
    /// Opens `dir/queue.redb` (creating both when missing, private to this user), after
    /// checking that other users cannot get at an existing store. Blocking.
    pub(super) fn open(dir: &Path, faults: Option<Arc<DiskFaults>>) -> Result<Self, QueueError> {
        let path = dir.join(STORE_FILE_NAME);
        check_private(dir)?;
        let database = open_database(dir, &path, faults.clone())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            path,
            faults,
            database: Mutex::new(Some(Arc::new(database))),
            failure: Mutex::new(None),
            failures: AtomicU64::new(0),
        })
    }

    /// The store file.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The handle to read or write with; the failure while the store is down.
    pub(super) fn database(&self) -> Result<Arc<Database>, QueueError> {
        if let Some(database) = lock(&self.database).clone() {
            return Ok(database);
        }
        Err(self.failure().unwrap_or(QueueError::Closed))
    }

    /// The storage failure the store is down for, if it is.
    pub(super) fn failure(&self) -> Option<QueueError> {
        lock(&self.failure).clone()
    }

    /// Storage failures that took the store down since it was opened.
    pub(super) fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Takes the store down after `error` failed a commit: counts it, says what to fix, and
    /// drops the handle (the file closes once the reads still using it end).
    pub(super) fn take_down(&self, error: QueueError) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        let dir = self.dir.display();
        if error == QueueError::Full {
            tracing::error!(
                store = %dir,
                "the store's disk is full: free space under {dir}; notifications are refused \
                 (503) and the store is reopened as soon as writes succeed again",
            );
        } else {
            tracing::error!(
                store = %dir,
                %error,
                "a store write failed: check the disk under {dir}; notifications are refused \
                 (503) until the store is reopened",
            );
        }
        *lock(&self.failure) = Some(error);
        let database = lock(&self.database).take();
        drop(database);
    }

    /// Opens the file again and brings the store up. Blocking.
    pub(super) fn reopen(&self) -> Result<(), QueueError> {
        let database = open_database(&self.dir, &self.path, self.faults.clone())?;
        *lock(&self.database) = Some(Arc::new(database));
        *lock(&self.failure) = None;
        Ok(())
    }

    /// Takes the handle out for closing; later reads and writes fail with `Closed`.
    pub(super) fn take_for_close(&self) -> Option<Arc<Database>> {
        *lock(&self.failure) = None;
        lock(&self.database).take()
    }
}

fn open_database(
    dir: &Path,
    path: &Path,
    faults: Option<Arc<DiskFaults>>,
) -> Result<Database, QueueError> {
    create_private_dir(dir).map_err(io_error)?;
    let backend = StoreBackend::open(path, faults)?;
    let database =
        Database::builder()
            .create_with_backend(backend)
            .map_err(|error| match error {
                DatabaseError::DatabaseAlreadyOpen => QueueError::AlreadyOpen {
                    path: path.display().to_string(),
                },
                other => storage_error(other),
            })?;
    let txn = database.begin_write().map_err(storage_error)?;
    {
        let mut tables = Tables::open(&txn)?;
        check_format_version(&mut tables.counters)?;
    }
    txn.commit().map_err(storage_error)?;
    Ok(database)
}

fn check_format_version(counters: &mut Table<'_, &'static str, u64>) -> Result<(), QueueError> {
    let found = counters
        .get(format::COUNTER_FORMAT_VERSION)
        .map_err(storage_error)?
        .map(|value| value.value());
    match found {
        None => {
            counters
                .insert(format::COUNTER_FORMAT_VERSION, format::FORMAT_VERSION)
                .map_err(storage_error)?;
            Ok(())
        }
        Some(version) if version == format::FORMAT_VERSION => Ok(()),
        // The tables of newer versions were just created by `Tables::open`: the upgrade
        // commits with them.
        Some(version) if format::UPGRADABLE_VERSIONS.contains(&version) => {
            counters
                .insert(format::COUNTER_FORMAT_VERSION, format::FORMAT_VERSION)
                .map_err(storage_error)?;
            tracing::info!(
                from = version,
                to = format::FORMAT_VERSION,
                "queue store format upgraded"
            );
            Ok(())
        }
        Some(found) => Err(QueueError::UnsupportedFormat {
            found,
            supported: format::FORMAT_VERSION,
        }),
    }
}

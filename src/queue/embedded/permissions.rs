//! Who may read the store: its directory is created 0700 and its file 0600, because the
//! store holds the generated webhook secret (whoever reads it computes valid authIds and
//! forges notifications), the poll cursors and the queued content references.
//!
//! Guarantees, whatever the process umask:
//! - a store directory this process creates is 0700 (its missing parents too), and the
//!   store file it creates is 0600;
//! - at open, a store other users can get at is refused ([`QueueError::OpenToOthers`], with
//!   the `chmod` that fixes it): a store file others may read or write, or a store directory
//!   others may write (they could replace the file). An existing store is never re-permitted
//!   behind the operator's back;
//! - group access is allowed with a warning: Kubernetes' `fsGroup` makes a volume and its
//!   files group-owned and group-writable on purpose.

use std::fs::DirBuilder;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use super::{STORE_FILE_NAME, io_error};
use crate::queue::QueueError;

/// The mode of a store directory this process creates.
pub const DIRECTORY_MODE: u32 = 0o700;

/// The mode of a store file this process creates.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` and its missing parents with mode 0700; an existing directory is left as
/// it is (the start check judges it).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(DIRECTORY_MODE)
        .create(dir)
}

/// The start check: refuses a store other users can get at, warns about group access.
pub(super) fn check_private(dir: &Path) -> Result<(), QueueError> {
    let file = dir.join(STORE_FILE_NAME);
    let dir_mode = mode_of(dir)?;
    let file_mode = mode_of(&file)?;
    let refused = |path: &Path, mode: u32| QueueError::OpenToOthers {
        path: path.display().to_string(),
        mode: format!("{mode:04o}"),
        dir: dir.display().to_string(),
    };
    if let Some(mode) = dir_mode.filter(|mode| mode & 0o002 != 0) {
        return Err(refused(dir, mode));
    }
    if let Some(mode) = file_mode.filter(|mode| mode & 0o006 != 0) {
        return Err(refused(&file, mode));
    }
    let group_file = file_mode.is_some_and(|mode| mode & 0o060 != 0);
    let group_dir = dir_mode.is_some_and(|mode| mode & 0o020 != 0);
    if group_file || group_dir {
        tracing::warn!(
            store = %dir.display(),
            "the store is open to its group (it holds the webhook secret): expected when \
             Kubernetes' fsGroup owns the volume; otherwise run `chmod -R g-rwx {}`",
            dir.display()
        );
    }
    Ok(())
}

/// The permission bits of `path`; `None` when it does not exist yet.
fn mode_of(path: &Path) -> Result<Option<u32>, QueueError> {
    match std::fs::metadata(path) {
        Ok(metadata) => Ok(Some(metadata.mode() & 0o777)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(io_error(error)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::clock::Clock;
    use crate::queue::{ContentQueue, EmbeddedQueue};

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o777
    }

    fn set_mode(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A store created and closed under `dir` (missing parents included).
    async fn created_store(dir: &Path) {
        let queue = EmbeddedQueue::open(dir, Clock::system()).await.unwrap();
        queue.close().await.unwrap();
    }

    #[tokio::test]
    async fn a_new_store_directory_is_0700_and_its_file_0600_whatever_the_umask() {
        let temporary = tempfile::tempdir().unwrap();
        let parent = temporary.path().join("state");
        let dir = parent.join("store");
        created_store(&dir).await;
        assert_eq!(mode(&parent), DIRECTORY_MODE, "a created parent");
        assert_eq!(mode(&dir), DIRECTORY_MODE);
        assert_eq!(mode(&dir.join(STORE_FILE_NAME)), FILE_MODE);
    }

    #[tokio::test]
    async fn a_store_file_others_can_read_is_refused_with_the_fix() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("store");
        created_store(&dir).await;
        set_mode(&dir, 0o755);
        set_mode(&dir.join(STORE_FILE_NAME), 0o644);
        let error = EmbeddedQueue::open(&dir, Clock::system())
            .await
            .expect_err("a store others can read is refused");
        let message = error.to_string();
        assert!(
            matches!(error, QueueError::OpenToOthers { .. }),
            "{error:?}"
        );
        assert!(message.contains("0644"), "{message}");
        assert!(
            message.contains(&format!("chmod -R o-rwx {}", dir.display())),
            "{message}"
        );
        assert_eq!(mode(&dir.join(STORE_FILE_NAME)), 0o644, "left as it was");

        set_mode(&dir.join(STORE_FILE_NAME), 0o600);
        set_mode(&dir, 0o777);
        let error = EmbeddedQueue::open(&dir, Clock::system())
            .await
            .expect_err("a directory others can write is refused");
        assert!(error.to_string().contains("0777"), "{error}");
    }

    #[tokio::test]
    async fn group_access_as_fs_group_gives_it_is_allowed() {
        let temporary = tempfile::tempdir().unwrap();
        let dir = temporary.path().join("store");
        created_store(&dir).await;
        // What the kubelet leaves with fsGroup: group rwx plus setgid, files group rw.
        set_mode(&dir, 0o2770);
        set_mode(&dir.join(STORE_FILE_NAME), 0o660);
        created_store(&dir).await;
        // Others may still enter the directory when the file is private.
        set_mode(&dir, 0o755);
        set_mode(&dir.join(STORE_FILE_NAME), 0o600);
        created_store(&dir).await;
    }
}

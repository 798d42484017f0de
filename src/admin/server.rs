//! The admin listener: a Unix socket in the store directory, mode 0600, serving the
//! [`protocol`](super::protocol) to the operator commands while the service runs.
//!
//! The socket is bound inside a fresh directory of mode 0700, restricted to the owner, then
//! renamed into place: while it has the umask's permissions nobody else can reach it, and a
//! socket left by a process that died is replaced atomically (the store lock guarantees no
//! other service uses this directory). It is removed on stop. Each connection's peer is
//! checked (`SO_PEERCRED`): only root and the service's own user are served, whatever the
//! file permissions become; anyone else gets an error line and the connection closes. Each connection is one request, served on its own
//! task; a stop cancels them (a backfill ends after its current tenant and content type)
//! and waits for them, so the store outlives every admin operation.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::operations::{self, AdminContext, AdminError};
use super::protocol::{AdminEvent, AdminRequest, MAX_REQUEST_BYTES};

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a stop waits for admin operations to end.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminListenError {
    /// The socket could not be created.
    #[error(
        "admin socket {path}: {source}; check that the store directory is writable (a Unix socket path must be shorter than 108 bytes)"
    )]
    Bind {
        /// The socket path.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// A running admin listener.
pub struct AdminServer {
    path: PathBuf,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl AdminServer {
    /// Binds `path` (mode 0600) and serves `context` until [`AdminServer::stop`].
    pub fn start(path: &Path, context: AdminContext) -> Result<Self, AdminListenError> {
        let bind_error = |source| AdminListenError::Bind {
            path: path.display().to_string(),
            source,
        };
        let listener = bind_private(path).map_err(bind_error)?;
        // The socket is this process's file: its owner is the service's user.
        let service_uid = std::fs::metadata(path).map_err(bind_error)?.uid();
        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            Arc::new(context),
            AllowedPeers { service_uid },
            tracker.clone(),
            shutdown.clone(),
        ));
        tracing::info!(socket = %path.display(), "admin listener ready");
        Ok(Self {
            path: path.to_path_buf(),
            shutdown,
            tracker,
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops accepting, cancels running operations, waits for them (bounded) and removes
    /// the socket.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(STOP_TIMEOUT, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("admin operations did not end in time");
        }
        if let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(socket = %self.path.display(), %error, "cannot remove the admin socket");
        }
    }
}

/// Binds inside a fresh 0700 directory (so the socket is unreachable while it has the
/// umask's permissions), restricts it to the owner, then renames it into place.
fn bind_private(path: &Path) -> std::io::Result<UnixListener> {
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other("the socket path names no directory"))?;
    // Short, so the temporary path fits a Unix socket path wherever the final one does.
    let staging = parent.join(format!(".a{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new().mode(0o700).create(&staging)?;
    let temporary = staging.join("s");
    let bound = UnixListener::bind(&temporary).and_then(|listener| {
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&temporary, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

/// Who may use the admin socket: root and the service's own user.
#[derive(Clone, Copy, Debug)]
struct AllowedPeers {
    service_uid: u32,
}

impl AllowedPeers {
    /// The refusal to send to `stream`'s peer, or `None` when it may be served. A peer whose
    /// credentials cannot be read is refused.
    fn refusal(&self, stream: &UnixStream) -> Option<String> {
        let uid = match stream.peer_cred() {
            Ok(credentials) => credentials.uid(),
            Err(error) => return Some(format!("cannot read the peer's credentials: {error}")),
        };
        if uid == 0 || uid == self.service_uid {
            return None;
        }
        Some(format!(
            "refused: the admin socket serves root and the service's user (uid {}) only, not uid {uid}",
            self.service_uid
        ))
    }
}

async fn accept_loop(
    listener: UnixListener,
    context: Arc<AdminContext>,
    peers: AllowedPeers,
    tracker: TaskTracker,
    shutdown: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                if let Some(message) = peers.refusal(&stream) {
                    tracing::warn!("admin listener: {message}");
                    tracker.spawn(refuse(stream, message));
                    continue;
                }
                tracker.spawn(serve_connection(stream, context.clone(), shutdown.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "admin listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Answers a refused peer with the reason, without reading its request; bounded, so a
/// peer that does not read cannot hold the task.
async fn refuse(stream: UnixStream, message: String) {
    let (_, mut writer) = stream.into_split();
    let answer = AdminEvent::Error { message };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let _ = write_line(&mut writer, &answer).await;
        let _ = writer.shutdown().await;
    })
    .await;
}

/// Reads one request, runs it, writes its answer lines.
async fn serve_connection(
    stream: UnixStream,
    context: Arc<AdminContext>,
    shutdown: CancellationToken,
) {
    let (reader, mut writer) = stream.into_split();
    let mut lines = FramedRead::new(
        BufReader::new(reader),
        LinesCodec::new_with_max_length(MAX_REQUEST_BYTES),
    );
    let request = match tokio::time::timeout(REQUEST_TIMEOUT, lines.next()).await {
        Ok(Some(Ok(line))) => serde_json::from_str::<AdminRequest>(&line)
            .map_err(|error| format!("not an admin request: {error}")),
        Ok(Some(Err(error))) => Err(format!("cannot read the request: {error}")),
        Ok(None) => return,
        Err(_) => Err("no request line within 10 seconds".to_string()),
    };
    let answer = match request {
        Ok(request) => run(&context, request, &mut writer, shutdown).await,
        Err(message) => AdminEvent::Error { message },
    };
    let _ = write_line(&mut writer, &answer).await;
    let _ = writer.shutdown().await;
}

async fn run(
    context: &AdminContext,
    request: AdminRequest,
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    shutdown: CancellationToken,
) -> AdminEvent {
    let result = match request {
        AdminRequest::SubscriptionsList(selection) => {
            operations::list_subscriptions(&context.tenants.current(), &selection)
                .await
                .map(AdminEvent::Subscriptions)
        }
        AdminRequest::SubscriptionsStart {
            selection,
            no_webhook,
        } => operations::start_subscriptions(
            &context.tenants.current(),
            &context.webhooks.load(),
            &selection,
            no_webhook,
        )
        .await
        .map(AdminEvent::SubscriptionChanges),
        AdminRequest::SubscriptionsStop(selection) => {
            operations::stop_subscriptions(&context.tenants.current(), &selection)
                .await
                .map(AdminEvent::SubscriptionChanges)
        }
        AdminRequest::Backfill(request) => run_backfill(context, request, writer, shutdown).await,
        AdminRequest::DeadLettersList(selection) => {
            operations::list_dead_letters(context, &selection)
                .await
                .map(AdminEvent::DeadLetters)
        }
        AdminRequest::DeadLettersRequeue(selection) => {
            operations::requeue_dead_letters(context, &selection)
                .await
                .map(AdminEvent::Requeued)
        }
    };
    result.unwrap_or_else(|error| AdminEvent::Error {
        message: error.to_string(),
    })
}

/// Runs a backfill while forwarding its progress; a client that went away stops it after
/// the current pair.
async fn run_backfill(
    context: &AdminContext,
    request: super::protocol::BackfillRequest,
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    shutdown: CancellationToken,
) -> Result<AdminEvent, AdminError> {
    let (sender, mut receiver) = mpsc::channel(16);
    let work = operations::backfill(context, request, sender, shutdown);
    tokio::pin!(work);
    let mut client_gone = false;
    let result = loop {
        tokio::select! {
            result = &mut work => break result,
            Some(progress) = receiver.recv() => {
                if !client_gone && write_line(writer, &AdminEvent::Progress(progress)).await.is_err() {
                    tracing::info!("the backfill command went away; stopping after the current pair");
                    client_gone = true;
                    receiver.close();
                }
            }
        }
    };
    while let Ok(progress) = receiver.try_recv() {
        if client_gone {
            break;
        }
        client_gone = write_line(writer, &AdminEvent::Progress(progress))
            .await
            .is_err();
    }
    result.map(AdminEvent::Backfill)
}

async fn write_line(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    event: &AdminEvent,
) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
    line.push(b'\n');
    writer.write_all(&line).await
}

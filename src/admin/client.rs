//! The command side of the admin socket: connect, send one request, read the answer lines.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio_util::codec::{FramedRead, LinesCodec};

use super::protocol::{AdminEvent, AdminRequest, BackfillProgress, MAX_ANSWER_LINE_BYTES};

/// Why a request to the running service failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminClientError {
    /// Nothing answers on the socket: the service is not running (or uses another store).
    #[error(
        "the service must run for this command: no connector answers on {path}; start it with `o365-connector run --config FILE`, or give its socket with --admin-socket"
    )]
    NotRunning {
        /// The socket path tried.
        path: PathBuf,
    },
    /// The socket exists but cannot be used by this user.
    #[error(
        "cannot connect to the admin socket {path}: {source}; run the command as the user that runs the service"
    )]
    Connect {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The connection broke or the answer was not understood.
    #[error("admin socket {path}: {reason}; check the service's log")]
    Protocol {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The service refused or failed the request.
    #[error("{0}")]
    Refused(String),
}

/// Connects to the admin socket; [`AdminClientError::NotRunning`] when nothing listens.
pub async fn connect(path: &Path) -> Result<UnixStream, AdminClientError> {
    match UnixStream::connect(path).await {
        Ok(stream) => Ok(stream),
        Err(error)
            if matches!(
                error.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Err(AdminClientError::NotRunning {
                path: path.to_path_buf(),
            })
        }
        Err(source) => Err(AdminClientError::Connect {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Sends `request` on a connected socket and returns the final answer, handing every
/// progress line to `on_progress` as it arrives. An [`AdminEvent::Error`] answer becomes
/// [`AdminClientError::Refused`].
pub async fn request(
    stream: UnixStream,
    path: &Path,
    request: &AdminRequest,
    mut on_progress: impl FnMut(&BackfillProgress),
) -> Result<AdminEvent, AdminClientError> {
    let broken = |reason: String| AdminClientError::Protocol {
        path: path.to_path_buf(),
        reason,
    };
    let (reader, mut writer) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|error| broken(error.to_string()))?;
    line.push(b'\n');
    writer
        .write_all(&line)
        .await
        .map_err(|error| broken(format!("cannot send the request: {error}")))?;
    let mut lines = FramedRead::new(
        reader,
        LinesCodec::new_with_max_length(MAX_ANSWER_LINE_BYTES),
    );
    while let Some(line) = lines.next().await {
        let line = line.map_err(|error| broken(format!("cannot read the answer: {error}")))?;
        let event: AdminEvent = serde_json::from_str(&line)
            .map_err(|error| broken(format!("answer not understood: {error}")))?;
        match event {
            AdminEvent::Progress(progress) => on_progress(&progress),
            AdminEvent::Error { message } => return Err(AdminClientError::Refused(message)),
            answer => return Ok(answer),
        }
    }
    Err(broken(
        "the service closed the connection without an answer".into(),
    ))
}

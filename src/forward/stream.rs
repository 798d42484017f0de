//! The task that owns the `Engine/Input` stream and the window of unacknowledged Logs.
//!
//! State machine, one stream at a time:
//! - **open**: every Log in the window is put on the new stream first, in window order
//!   (resends), then each newly accepted Log as it arrives. Acks pop the window from the
//!   front up to and including the earliest Log with the acked id.
//! - **failed** (error status, end of stream, transport error, refused connection): the
//!   window is kept whole; after a backoff delay a new stream opens. Logs accepted during
//!   the delay join the window and go out on the next stream.
//! - **isolating** (after a failure that is not an outage, see [`is_outage`]): the next
//!   stream carries only the first Log of the window; Logs accepted meanwhile join the
//!   window only. Its Ack ends the isolation: the rest of the window follows on the same
//!   stream, in order. When the lone Log fails [`POISON_ATTEMPTS`] times in a row with a
//!   non-outage status, it leaves the window as refused and the next stream carries the
//!   whole window again.
//! - **draining** (shutdown requested): no new Logs arrive (the window is closed); the task
//!   stops once the window is empty or the deadline passes, whichever comes first.
//!
//! Invariant: a Log's position on a stream equals its position in the window, so an Ack's
//! "everything sent before" is exactly the window's prefix. To keep it, once a Log cannot be
//! put on a stream, nothing later is put on that stream: it is abandoned and reopened.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant as TokioInstant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::client::Grpc;
use tonic::transport::Channel;

use prost::Message as _;
use sha2::{Digest, Sha256};

use super::events::{
    EngineConnected, OutageRecovered, PoisonLogGivenUp, StoppedUnacked, StreamFailed,
    StreamRefused, UnmatchedAck,
};
use super::wire::{EncodedLog, open_input};
use super::{Completion, Counters, ForwardError, POISON_ATTEMPTS, ShutdownReport, Submission};
use crate::proto::{Ack, Log};
use crate::retry::{Backoff, RetryPolicy};

/// Queued Logs taken into the window per wake-up, at most.
const BATCH: usize = 256;

/// A Log in the window.
struct InFlight {
    log: EncodedLog,
    /// Its receipt (and room), or its share of its batch's.
    completion: Completion,
    /// Whether this Log was put on a stream that opened (so it may have reached the
    /// engine): putting it on a later stream counts as a resend.
    on_opened_stream: bool,
}

/// Why a stream (or the wait before the next one) ended.
enum StreamEnd {
    /// The stream broke; reconnect after a delay. `outage` per [`is_outage`].
    Failed { reason: String, outage: bool },
    /// Drained, deadline passed, or every handle dropped: stop.
    Stop,
}

pub(super) struct StreamTask {
    client: Grpc<Channel>,
    submissions: mpsc::Receiver<Submission>,
    /// Every handle dropped: no more Logs can come.
    submissions_closed: bool,
    drain_by: watch::Receiver<Option<TokioInstant>>,
    deadline: Option<TokioInstant>,
    window: VecDeque<InFlight>,
    counters: Arc<Counters>,
    reconnect: RetryPolicy,
    max_in_flight: usize,
    /// When the current outage began, if the engine is unreachable.
    outage_since: Option<Instant>,
    connected_once: bool,
    /// Whether the current stream opened.
    stream_open: bool,
    /// Whether the current stream received any Ack.
    stream_acked: bool,
    /// Logs resent when the current stream opened.
    resent_on_stream: u64,
    unmatched_logged_at: Option<Instant>,
    /// `Some(n)` while isolating the first Log of the window: it has been refused `n`
    /// times alone so far.
    isolating: Option<u32>,
}

impl StreamTask {
    pub(super) fn new(
        client: Grpc<Channel>,
        submissions: mpsc::Receiver<Submission>,
        drain_by: watch::Receiver<Option<TokioInstant>>,
        counters: Arc<Counters>,
        reconnect: RetryPolicy,
        max_in_flight: usize,
    ) -> Self {
        Self {
            client,
            submissions,
            submissions_closed: false,
            drain_by,
            deadline: None,
            window: VecDeque::with_capacity(max_in_flight),
            counters,
            reconnect,
            max_in_flight,
            outage_since: None,
            connected_once: false,
            stream_open: false,
            stream_acked: false,
            resent_on_stream: 0,
            unmatched_logged_at: None,
            isolating: None,
        }
    }

    /// Runs streams until shutdown; returns what was left unacknowledged.
    pub(super) async fn run(mut self) -> ShutdownReport {
        let mut backoff: Option<Backoff> = None;
        loop {
            let end = self.run_stream().await;
            // A stream that got acks ends a failure streak; one that opened and broke
            // without any does not, so a flapping engine is retried ever more slowly.
            if self.stream_acked {
                backoff = None;
            }
            let StreamEnd::Failed { reason, outage } = end else {
                break;
            };
            self.note_failure(&reason);
            if !outage {
                self.suspect_first_log(&reason);
            }
            let delay = backoff
                .get_or_insert_with(|| self.reconnect.backoff())
                .next_delay(None)
                .unwrap_or(self.reconnect.max_delay);
            if !self.wait_before_reconnect(delay).await {
                break;
            }
            Counters::add(&self.counters.reconnects, 1);
        }
        self.finish()
    }

    /// One stream, from opening to its end.
    async fn run_stream(&mut self) -> StreamEnd {
        self.stream_open = false;
        self.stream_acked = false;
        let (outbound, outbound_rx) = mpsc::channel::<Bytes>(self.max_in_flight);
        if let Err(reason) = self.put_window_on_stream(&outbound) {
            return failed_transport(reason);
        }
        let mut client = self.client.clone();
        let opening = open_input(&mut client, ReceiverStream::new(outbound_rx));
        tokio::pin!(opening);
        let mut acks: Option<Streaming<Ack>> = None;
        loop {
            if self.drained() {
                return StreamEnd::Stop;
            }
            tokio::select! {
                opened = &mut opening, if acks.is_none() => match opened {
                    Ok(response) => {
                        acks = Some(response.into_inner());
                        self.note_connected();
                    }
                    Err(status) => return failed(&status),
                },
                next = next_ack(&mut acks) => {
                    let broken = match acks.as_mut() {
                        Some(acks) => self.handle_acks(next, acks, &outbound),
                        None => None,
                    };
                    if let Some(end) = broken {
                        return end;
                    }
                }
                submission = self.submissions.recv(), if !self.submissions_closed => {
                    let Some(submission) = submission else {
                        self.submissions_closed = true;
                        continue;
                    };
                    if let Err(reason) = self.accept_batch(submission, &outbound) {
                        return failed_transport(reason);
                    }
                }
                changed = self.drain_by.changed(), if self.deadline.is_none() => {
                    self.read_drain_request(changed.is_ok());
                }
                () = sleep_until(self.deadline) => return StreamEnd::Stop,
            }
        }
    }

    /// Waits `delay` before the next stream, still accepting Logs into the window. Returns
    /// false when the task should stop instead.
    async fn wait_before_reconnect(&mut self, delay: Duration) -> bool {
        let retry_at = tokio::time::sleep(delay);
        tokio::pin!(retry_at);
        loop {
            if self.drained() {
                return false;
            }
            tokio::select! {
                () = &mut retry_at => return true,
                submission = self.submissions.recv(), if !self.submissions_closed => {
                    match submission {
                        // Cannot fail without a stream: it only joins the window.
                        Some(submission) => { let _ = self.accept(submission, None); }
                        None => self.submissions_closed = true,
                    }
                }
                changed = self.drain_by.changed(), if self.deadline.is_none() => {
                    self.read_drain_request(changed.is_ok());
                }
                () = sleep_until(self.deadline) => return false,
            }
        }
    }

    /// Puts the window on a new stream, in order: the whole window, or only its first Log
    /// while isolating it.
    fn put_window_on_stream(&mut self, outbound: &mpsc::Sender<Bytes>) -> Result<(), String> {
        let count = self.on_stream_count();
        for entry in self.window.iter().take(count) {
            // Capacity is the window size, so only a closed stream refuses.
            // Counted as sent or resent once the stream opens (`note_connected`).
            outbound
                .try_send(entry.log.bytes.clone())
                .map_err(|_| "the request stream closed before the resend".to_owned())?;
        }
        Ok(())
    }

    /// How many Logs at the front of the window belong on the current stream.
    fn on_stream_count(&self) -> usize {
        match self.isolating {
            Some(_) => self.window.len().min(1),
            None => self.window.len(),
        }
    }

    /// The isolated Log was acked: the rest of the window follows on the same stream.
    fn end_isolation(&mut self, outbound: &mpsc::Sender<Bytes>) -> Result<(), String> {
        self.isolating = None;
        for entry in &mut self.window {
            outbound
                .try_send(entry.log.bytes.clone())
                .map_err(|_| "the request stream closed".to_owned())?;
            let counter = if entry.on_opened_stream {
                &self.counters.resent
            } else {
                &self.counters.logs_sent
            };
            Counters::add(counter, 1);
            entry.on_opened_stream = true;
        }
        Ok(())
    }

    /// Accepts `first` and whatever else is already queued (up to [`BATCH`]), so that a
    /// busy stream costs one wake-up per batch rather than per Log. While isolating, they
    /// only join the window.
    fn accept_batch(
        &mut self,
        first: Submission,
        outbound: &mpsc::Sender<Bytes>,
    ) -> Result<(), String> {
        let outbound = self.isolating.is_none().then_some(outbound);
        self.accept(first, outbound)?;
        for _ in 1..BATCH {
            let Ok(next) = self.submissions.try_recv() else {
                break;
            };
            self.accept(next, outbound)?;
        }
        Ok(())
    }

    /// Adds a submission's Logs to the window and, with a stream, puts them on the stream.
    fn accept(
        &mut self,
        submission: Submission,
        outbound: Option<&mpsc::Sender<Bytes>>,
    ) -> Result<(), String> {
        let mut result = Ok(());
        match submission {
            Submission::One { log, acked, room } => {
                let completion = Completion::One { acked, _room: room };
                self.accept_log(log, completion, outbound, &mut result);
            }
            Submission::Batch { logs, shared } => {
                for (position, log) in logs.into_iter().enumerate() {
                    let completion = Completion::Member {
                        shared: shared.clone(),
                        position,
                    };
                    self.accept_log(log, completion, outbound, &mut result);
                }
            }
        }
        self.publish_window_size(false);
        result
    }

    /// Adds one Log to the window, and to the stream while `result` is still `Ok` (once a
    /// Log cannot be put on a stream, nothing later is).
    fn accept_log(
        &mut self,
        log: EncodedLog,
        completion: Completion,
        outbound: Option<&mpsc::Sender<Bytes>>,
        result: &mut Result<(), String>,
    ) {
        let mut entry = InFlight {
            log,
            completion,
            on_opened_stream: false,
        };
        if let (Some(outbound), Ok(())) = (outbound, &*result) {
            match outbound.try_send(entry.log.bytes.clone()) {
                Ok(()) if self.stream_open => {
                    entry.on_opened_stream = true;
                    Counters::add(&self.counters.logs_sent, 1);
                }
                Ok(()) => {}
                Err(_) => *result = Err("the request stream closed".to_owned()),
            }
        }
        self.window.push_back(entry);
    }

    /// Handles `first` and every Ack already received (up to [`BATCH`]); returns how the
    /// stream ended, if it did.
    /// The window's size is published once for all of them, not per Ack.
    fn handle_acks(
        &mut self,
        first: Result<Option<Ack>, tonic::Status>,
        acks: &mut Streaming<Ack>,
        outbound: &mpsc::Sender<Bytes>,
    ) -> Option<StreamEnd> {
        let window_before = self.window.len();
        let end = self.take_acks(first, acks, outbound);
        if self.window.len() != window_before {
            self.publish_window_size(true);
        }
        end
    }

    fn take_acks(
        &mut self,
        first: Result<Option<Ack>, tonic::Status>,
        acks: &mut Streaming<Ack>,
        outbound: &mpsc::Sender<Bytes>,
    ) -> Option<StreamEnd> {
        let mut next = Some(first);
        for _ in 0..BATCH {
            // `message` is cancel safe: a pending poll dropped here loses nothing.
            let received = next.take().or_else(|| acks.message().now_or_never())?;
            match received {
                Ok(Some(ack)) => {
                    if let Err(reason) = self.handle_ack(&ack, outbound) {
                        return Some(failed_transport(reason));
                    }
                }
                // No status: the engine closed the stream (restarting, say), not a verdict
                // on a Log.
                Ok(None) => return Some(failed_transport("the engine ended the stream".into())),
                Err(status) => return Some(failed(&status)),
            }
        }
        None
    }

    fn handle_ack(&mut self, ack: &Ack, outbound: &mpsc::Sender<Bytes>) -> Result<(), String> {
        self.stream_acked = true;
        self.note_recovered();
        // While isolating, only the lone Log is on the stream.
        let searched = self.on_stream_count();
        match acknowledge(&mut self.window, searched, &ack.last_id) {
            Some(confirmed) => {
                Counters::add(&self.counters.logs_acked, confirmed as u64);
                if self.isolating.is_some() {
                    return self.end_isolation(outbound);
                }
            }
            None => self.note_unmatched_ack(),
        }
        Ok(())
    }

    /// A stream failed with a status that may be the first Log's fault: isolate it, or,
    /// after [`POISON_ATTEMPTS`] refusals alone, give it up.
    fn suspect_first_log(&mut self, reason: &str) {
        if self.window.is_empty() {
            self.isolating = None;
            return;
        }
        let refusals = match self.isolating {
            None => {
                StreamRefused { reason }.emit();
                self.isolating = Some(0);
                return;
            }
            Some(refusals) => refusals + 1,
        };
        if refusals < POISON_ATTEMPTS {
            self.isolating = Some(refusals);
            return;
        }
        self.isolating = None;
        self.give_up_first(reason);
    }

    /// The first Log of the window is poison: its receipt resolves to
    /// [`ForwardError::Refused`] and it leaves the window.
    fn give_up_first(&mut self, reason: &str) {
        let Some(entry) = self.window.pop_front() else {
            return;
        };
        let raw_sha256 = match Log::decode(entry.log.bytes.clone()) {
            Ok(log) => Sha256::digest(log.raw.as_bytes()).into(),
            Err(_) => [0; 32],
        };
        PoisonLogGivenUp {
            log_id: &String::from_utf8_lossy(entry.log.id()),
            reason,
        }
        .emit(&self.counters);
        entry.completion.resolve(Err(ForwardError::Refused {
            status: reason.to_owned(),
            raw_sha256,
        }));
        self.publish_window_size(true);
    }

    fn note_unmatched_ack(&mut self) {
        UnmatchedAck.emit(&self.counters, &mut self.unmatched_logged_at);
    }

    /// The stream opened: every Log put on it so far counts as sent (or resent).
    fn note_connected(&mut self) {
        self.stream_open = true;
        self.counters.set_connected(true);
        let mut resent = 0u64;
        let mut first_sends = 0u64;
        let count = self.on_stream_count();
        for entry in self.window.iter_mut().take(count) {
            if entry.on_opened_stream {
                resent += 1;
            } else {
                first_sends += 1;
            }
            entry.on_opened_stream = true;
        }
        Counters::add(&self.counters.resent, resent);
        Counters::add(&self.counters.logs_sent, first_sends);
        self.resent_on_stream = resent;
        EngineConnected {
            first: !self.connected_once,
        }
        .emit();
        self.connected_once = true;
        // With Logs to deliver, the outage ends at the first Ack, so an engine that opens
        // streams and drops them at once stays one outage (one WARN, one INFO).
        if self.window.is_empty() {
            self.note_recovered();
        }
    }

    fn note_recovered(&mut self) {
        if let Some(since) = self.outage_since.take() {
            OutageRecovered {
                outage: since.elapsed(),
                resent_logs: self.resent_on_stream,
            }
            .emit();
        }
    }

    fn note_failure(&mut self, reason: &str) {
        let outage_began = self.outage_since.is_none();
        if outage_began {
            self.outage_since = Some(Instant::now());
        }
        StreamFailed {
            reason,
            unacked_logs: self.window.len(),
            outage_began,
        }
        .emit(&self.counters);
    }

    fn read_drain_request(&mut self, handle_alive: bool) {
        // Every handle dropped without a shutdown: stop at once.
        let deadline = if handle_alive {
            *self.drain_by.borrow()
        } else {
            Some(TokioInstant::now())
        };
        self.deadline = deadline;
    }

    /// Draining and nothing left to wait for.
    fn drained(&self) -> bool {
        let no_more_logs =
            self.submissions_closed || (self.deadline.is_some() && self.submissions.is_empty());
        self.deadline.is_some() && self.window.is_empty() && no_more_logs
    }

    /// Publishes the window's size; `progressed` when Logs left it (acked or given up).
    fn publish_window_size(&self, progressed: bool) {
        self.counters.in_flight.store(
            self.window.len() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.counters
            .set_waiting(!self.window.is_empty(), progressed);
    }

    /// Ends the task: whatever is still in the window or queued is unacknowledged; dropping
    /// it resolves those receipts to `NotAcknowledged`.
    fn finish(mut self) -> ShutdownReport {
        self.submissions.close();
        let mut unacked = self.window.len() as u64;
        while let Ok(submission) = self.submissions.try_recv() {
            unacked += submission.len() as u64;
        }
        self.window.clear();
        self.publish_window_size(false);
        self.counters.set_connected(false);
        if unacked > 0 {
            StoppedUnacked {
                unacked_logs: unacked,
            }
            .emit();
        }
        ShutdownReport { unacked }
    }
}

/// The ack rule: an Ack for `id` confirms the earliest Log with that id among the first
/// `searched` of the window (those on the stream) and every Log before it. Pops them,
/// resolves their receipts, and returns how many; `None` (window untouched) when none of
/// them has that id.
fn acknowledge(window: &mut VecDeque<InFlight>, searched: usize, id: &str) -> Option<usize> {
    let position = window
        .iter()
        .take(searched)
        .position(|entry| entry.log.id() == id.as_bytes())?;
    for entry in window.drain(..=position) {
        entry.completion.resolve(Ok(()));
    }
    Some(position + 1)
}

async fn next_ack(acks: &mut Option<Streaming<Ack>>) -> Result<Option<Ack>, tonic::Status> {
    match acks {
        Some(acks) => acks.message().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<TokioInstant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Whether a failed stream is an outage (reconnect and resend, never blame a Log): the
/// status `UNAVAILABLE`, or a transport error (a status tonic made from an I/O, HTTP/2 or
/// connection error carries that error as its source, or is `CANCELLED` by a reset). Any
/// other status came from the engine and may be a Log's fault.
fn is_outage(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled
    ) || status.source().is_some()
}

/// The end of a stream that failed with `status`.
fn failed(status: &tonic::Status) -> StreamEnd {
    StreamEnd::Failed {
        reason: describe(status),
        outage: is_outage(status),
    }
}

/// The end of a stream that broke below gRPC (closed, ended without a status).
fn failed_transport(reason: String) -> StreamEnd {
    StreamEnd::Failed {
        reason,
        outage: true,
    }
}

/// A stream failure in words, without any Log content.
fn describe(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::{Semaphore, oneshot};

    use super::*;

    fn window_of(
        ids: &[&str],
    ) -> (
        VecDeque<InFlight>,
        Vec<oneshot::Receiver<Result<(), ForwardError>>>,
    ) {
        let slots = Arc::new(Semaphore::new(ids.len() * 2));
        let mut receipts = Vec::new();
        let window = ids
            .iter()
            .map(|id| {
                let (acked, receipt) = oneshot::channel();
                receipts.push(receipt);
                InFlight {
                    log: EncodedLog::new(Log {
                        id: (*id).to_owned(),
                        ..Log::default()
                    }),
                    completion: Completion::One {
                        acked,
                        _room: super::super::Room {
                            _slot: slots.clone().try_acquire_owned().unwrap(),
                            _bytes: slots.clone().try_acquire_owned().unwrap(),
                        },
                    },
                    on_opened_stream: true,
                }
            })
            .collect();
        (window, receipts)
    }

    fn ids(window: &VecDeque<InFlight>) -> Vec<&str> {
        window
            .iter()
            .map(|entry| std::str::from_utf8(entry.log.id()).unwrap())
            .collect()
    }

    #[test]
    fn an_ack_confirms_the_earliest_log_with_its_id_and_everything_before() {
        let (mut window, mut receipts) = window_of(&["a", "b", "a", "c", "a"]);
        assert_eq!(
            acknowledge(&mut window, usize::MAX, "b"),
            Some(2),
            "b and the a before it"
        );
        assert_eq!(ids(&window), ["a", "c", "a"]);
        assert_eq!(
            acknowledge(&mut window, usize::MAX, "a"),
            Some(1),
            "only the earliest a"
        );
        assert_eq!(ids(&window), ["c", "a"]);
        assert_eq!(receipts[0].try_recv(), Ok(Ok(())));
        assert_eq!(receipts[1].try_recv(), Ok(Ok(())));
        assert_eq!(receipts[2].try_recv(), Ok(Ok(())));
        assert!(receipts[3].try_recv().is_err(), "c is not acked yet");
        assert_eq!(
            acknowledge(&mut window, usize::MAX, "a"),
            Some(2),
            "c and the last a"
        );
        assert!(window.is_empty());
    }

    #[test]
    fn an_ack_for_an_unknown_id_leaves_the_window_alone() {
        let (mut window, mut receipts) = window_of(&["a", "b"]);
        assert_eq!(acknowledge(&mut window, usize::MAX, "z"), None);
        assert_eq!(ids(&window), ["a", "b"]);
        assert!(receipts[0].try_recv().is_err());
    }
}

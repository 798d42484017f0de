//! Best-effort delivery of operational notifications on `Engine/Notify`.
//!
//! Notifications are rare (integration failures, at most hourly per tenant and content
//! type), so each one gets its own short stream: send the Message, wait for its Ack, close.
//! A failed attempt is retried after a backoff delay, [`ATTEMPTS`] times in all, then given
//! up and counted. This task never touches the Log stream, so a notification never delays
//! a Log, and a Log never waits behind a notification.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::Counters;
use super::events::{NotificationDelivered, NotificationGivenUp};
use crate::proto::{EngineClient, Message};
use crate::retry::RetryPolicy;

/// Topic of integration failures, as the engine knows it.
pub(super) const INTEGRATION_FAILURE: &str = "integration_failure";

/// Attempts per notification before it is given up.
const ATTEMPTS: usize = 3;

/// How long one attempt waits for its Ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh random id for a Message (UUID v4 text).
pub(super) fn new_message_id() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// Delivers queued notifications until `stop` is cancelled or every handle is dropped.
pub(super) async fn run(
    client: EngineClient<Channel>,
    mut notifications: mpsc::Receiver<Message>,
    stop: CancellationToken,
    counters: Arc<Counters>,
    retry: RetryPolicy,
) {
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return,
            next = notifications.recv() => match next {
                Some(message) => message,
                None => return,
            },
        };
        let topic = message.topic.clone();
        let delivered = tokio::select! {
            () = stop.cancelled() => return,
            delivered = deliver(&client, message, &retry) => delivered,
        };
        match delivered {
            Ok(()) => NotificationDelivered.emit(&counters),
            Err(reason) => NotificationGivenUp {
                topic: &topic,
                reason: &reason,
            }
            .emit(&counters),
        }
    }
}

async fn deliver(
    client: &EngineClient<Channel>,
    message: Message,
    retry: &RetryPolicy,
) -> Result<(), String> {
    let mut backoff = retry.backoff();
    let mut last_failure = String::new();
    for attempt in 1..=ATTEMPTS {
        match attempt_once(client.clone(), message.clone()).await {
            Ok(()) => return Ok(()),
            Err(reason) => last_failure = reason,
        }
        if attempt < ATTEMPTS {
            let delay = backoff.next_delay(None).unwrap_or(retry.max_delay);
            tokio::time::sleep(delay).await;
        }
    }
    Err(last_failure)
}

async fn attempt_once(mut client: EngineClient<Channel>, message: Message) -> Result<(), String> {
    let id = message.id.clone();
    let exchange = async move {
        let response = client
            .notify(tokio_stream::once(message))
            .await
            .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
        let mut acks = response.into_inner();
        loop {
            match acks.message().await {
                Ok(Some(ack)) if ack.last_id == id => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err("the engine ended the stream without an ack".to_owned()),
                Err(status) => return Err(format!("{:?}: {}", status.code(), status.message())),
            }
        }
    };
    tokio::time::timeout(ACK_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no ack within {ACK_TIMEOUT:?}"))?
}

//! Asynchronous invocations (SCF's `InvocationType=Event`): the API puts the event on a
//! JetStream stream of the control plane's NATS server and answers 202 with a request id
//! once the server has stored it; a durable consumer calls the function with that request
//! id and `X-Scf-Trigger-Src: async`. Delivery is at least once: an event survives a control-plane restart (the stream
//! and the consumer's position live on the NATS server), a failed call is tried again with
//! back-off, and one whose control plane died mid-call is redelivered after the ack wait.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream, AckKind};
use async_nats::HeaderMap;
use futures_util::StreamExt;

use super::{lock, ScheduleError, Scheduler};

/// The stream that holds queued events.
pub const STREAM: &str = "FNRT_ASYNC";
/// Subjects: `fnrt.async.<function id>`.
const SUBJECT: &str = "fnrt.async";
/// The durable consumer that delivers them.
const CONSUMER: &str = "fnrt-async";
/// The largest event an async call takes (SCF's limit for asynchronous invocations).
pub const MAX_EVENT_BYTES: usize = 128 * 1024;
/// Attempts per event: the first call and the retries.
const ATTEMPTS: i64 = 8;
/// How long an event waits in the stream before it is dropped undelivered.
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// Calls delivered at once.
const CONCURRENCY: usize = 32;
/// Without a progress ack within this, a message goes to another delivery.
const ACK_WAIT: Duration = Duration::from_secs(30);
const REQUEST_ID: &str = "Fnrt-Request-Id";
/// The `X-Scf-Trigger-Src` a queued call carries.
pub const TRIGGER_SOURCE: &str = "async";

/// Why an event was not queued.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The control plane has no NATS server.
    #[error("asynchronous invocation needs a NATS server with JetStream: set the control plane's nats_url")]
    Off,
    /// The event is larger than an async call takes.
    #[error("the event is {0} bytes; an asynchronous invocation takes at most {MAX_EVENT_BYTES} (call synchronously for larger bodies)")]
    TooLarge(usize),
    /// The NATS server did not store it.
    #[error("the queue did not take the event (NATS at {url}): {message}")]
    Unavailable {
        /// The server.
        url: String,
        /// Its answer.
        message: String,
    },
}

impl Scheduler {
    /// Queues `payload` for function `function_id`; its request id once the NATS server
    /// has stored it.
    pub async fn enqueue(&self, function_id: &str, payload: Vec<u8>) -> Result<String, QueueError> {
        if self.cfg.nats_url.is_empty() {
            return Err(QueueError::Off);
        }
        if payload.len() > MAX_EVENT_BYTES {
            return Err(QueueError::TooLarge(payload.len()));
        }
        let unavailable =
            |message: String| QueueError::Unavailable { url: self.cfg.nats_url.clone(), message };
        let js = lock(&self.queue)
            .clone()
            .ok_or_else(|| unavailable("not connected (yet): try again in a few seconds".into()))?;
        let request_id = uuid::Uuid::new_v4().to_string();
        let mut headers = HeaderMap::new();
        headers.insert(REQUEST_ID, request_id.as_str());
        // The server drops a second copy of one request id within its duplicate window.
        headers.insert("Nats-Msg-Id", request_id.as_str());
        let ack = js
            .publish_with_headers(format!("{SUBJECT}.{function_id}"), headers, payload.into())
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| unavailable("no acknowledgement within 10 s".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        Ok(request_id)
    }

    /// Connects to the NATS server, makes the stream and the consumer if they are not
    /// there, and delivers queued events until the process ends.
    pub async fn run_queue(self: Arc<Self>) {
        let url = self.cfg.nats_url.clone();
        if url.is_empty() {
            return;
        }
        loop {
            match self.consumer(&url).await {
                Ok(consumer) => self.clone().deliver_all(consumer).await,
                Err(e) => tracing::warn!(nats = %url, error = %e, "async invocation queue unavailable"),
            }
            *lock(&self.queue) = None;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    }

    async fn consumer(&self, url: &str) -> Result<jetstream::consumer::Consumer<pull::Config>, String> {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let js = jetstream::new(client);
        let stream = js
            .get_or_create_stream(stream::Config {
                name: STREAM.into(),
                subjects: vec![format!("{SUBJECT}.>")],
                storage: stream::StorageType::File,
                retention: stream::RetentionPolicy::WorkQueue,
                max_age: MAX_AGE,
                max_message_size: i32::try_from(MAX_EVENT_BYTES + 4096).unwrap_or(i32::MAX),
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .map_err(|e| {
                format!("cannot make the stream {STREAM} (is JetStream on? nats-server -js): {e}")
            })?;
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: ACK_WAIT,
                    max_deliver: ATTEMPTS,
                    max_ack_pending: 1000,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("cannot make the consumer {CONSUMER}: {e}"))?;
        *lock(&self.queue) = Some(js);
        tracing::info!(nats = %url, "async invocation queue ready");
        Ok(consumer)
    }

    async fn deliver_all(self: Arc<Self>, consumer: jetstream::consumer::Consumer<pull::Config>) {
        let messages = match consumer.messages().await {
            Ok(m) => m,
            Err(e) => return tracing::warn!(error = %e, "cannot read the async invocation queue"),
        };
        messages
            .take_while(|m| std::future::ready(m.is_ok()))
            .filter_map(|m| std::future::ready(m.ok()))
            .for_each_concurrent(CONCURRENCY, |msg| {
                let me = self.clone();
                async move { me.deliver_one(msg).await }
            })
            .await;
    }

    async fn deliver_one(&self, msg: jetstream::Message) {
        let function_id =
            msg.subject.as_str().strip_prefix(&format!("{SUBJECT}.")).unwrap_or_default().to_string();
        let request_id = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(REQUEST_ID))
            .map(|v| v.as_str().to_string())
            .unwrap_or_default();
        let attempt = msg.info().map_or(1, |i| i.delivered);
        let outcome = {
            let call = self.call_as(&function_id, msg.payload.to_vec(), TRIGGER_SOURCE, &request_id);
            tokio::pin!(call);
            let mut tick = tokio::time::interval(ACK_WAIT / 3);
            tick.tick().await;
            loop {
                tokio::select! {
                    r = &mut call => break r,
                    _ = tick.tick() => { let _ = msg.ack_with(AckKind::Progress).await; }
                }
            }
        };
        let failure = match outcome {
            Ok(r) if r.status < 500 && r.status != 429 => None,
            Ok(r) => Some(format!("the function answered {}", r.status)),
            Err(ScheduleError::NotRunning(_)) if !self.exists(&function_id) => {
                tracing::info!(function = %function_id, request_id = %request_id, "async event dropped: the function was deleted");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
            Err(e) => Some(e.to_string()),
        };
        let Some(why) = failure else {
            tracing::info!(function = %function_id, request_id = %request_id, attempt, "async event delivered");
            let _ = msg.ack().await;
            return;
        };
        if attempt >= ATTEMPTS {
            tracing::warn!(function = %function_id, request_id = %request_id, error = %why, "async event not delivered after {ATTEMPTS} attempts: dropped");
            let _ = msg.ack_with(AckKind::Term).await;
        } else {
            let wait = retry_wait(attempt);
            tracing::info!(function = %function_id, request_id = %request_id, attempt, error = %why, retry_in_ms = wait.as_millis() as u64, "async event failed; retrying");
            let _ = msg.ack_with(AckKind::Nak(Some(wait))).await;
        }
    }

    fn exists(&self, function_id: &str) -> bool {
        self.state.read(|d| d.functions.contains_key(function_id))
    }
}

/// The wait before attempt `attempt + 1`: 1 s, doubling, at most 60 s.
fn retry_wait(attempt: i64) -> Duration {
    let exp = u32::try_from(attempt.clamp(1, 7) - 1).unwrap_or(0);
    Duration::from_secs(2u64.pow(exp).min(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_minute() {
        let waits: Vec<u64> = (1..=8).map(|a| retry_wait(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
    }
}

//! The feed of changes: one etcd watch on the prefix, its events grouped by revision
//! (one transaction, one batch), progress notifications as progress, and a watch
//! cancelled because its start was compacted away as a reset.

use std::collections::VecDeque;

use etcd_client::{Client, EventType, WatchOptions, WatchStream};
use futures_util::stream::BoxStream;

use super::super::{io, Event, Feed, Rev, StoreError};
use super::prefix_end;

struct Follow {
    client: Client,
    prefix: String,
    after: Rev,
    stream: Option<WatchStream>,
    ready: VecDeque<Feed>,
    done: bool,
}

/// Every batch under `prefix` after revision `after`.
pub(super) fn feed(
    client: Client,
    prefix: String,
    after: Rev,
) -> BoxStream<'static, Result<Feed, StoreError>> {
    let start = Follow { client, prefix, after, stream: None, ready: VecDeque::new(), done: false };
    Box::pin(futures_util::stream::unfold(start, |mut f| async move {
        if let Some(item) = f.ready.pop_front() {
            return Some((Ok(item), f));
        }
        if f.done {
            return None;
        }
        match f.next().await {
            Ok(()) => {
                let item = f.ready.pop_front()?;
                Some((Ok(item), f))
            }
            Err(e) => {
                f.done = true;
                Some((Err(e), f))
            }
        }
    }))
}

impl Follow {
    /// Reads until something is ready (or the watch ends).
    async fn next(&mut self) -> Result<(), StoreError> {
        if self.stream.is_none() {
            let options = WatchOptions::new()
                .with_range(prefix_end(self.prefix.as_bytes()))
                .with_start_revision(self.after + 1)
                .with_progress_notify();
            let mut wc = self.client.watch_client();
            self.stream =
                Some(wc.watch(self.prefix.clone(), Some(options)).await.map_err(|e| io("etcd watch")(&e))?);
        }
        let Some(stream) = self.stream.as_mut() else { return Ok(()) };
        while self.ready.is_empty() {
            let Some(resp) = stream.message().await.map_err(|e| io("etcd watch")(&e))? else {
                return Err(io("etcd watch")(&"the watch ended"));
            };
            if resp.canceled() {
                self.done = true;
                if resp.compact_revision() > 0 {
                    self.ready.push_back(Feed::Reset);
                    return Ok(());
                }
                return Err(io("etcd watch")(&format!("cancelled: {}", resp.cancel_reason())));
            }
            if resp.events().is_empty() {
                // Only a progress notification says nothing happened up to its revision
                // (a created answer's revision may be ahead of events still to come).
                if !resp.created() {
                    if let Some(rev) = resp.header().map(|h| h.revision()).filter(|r| *r > self.after) {
                        self.after = rev;
                        self.ready.push_back(Feed::Progress(rev));
                    }
                }
                continue;
            }
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                let rev = kv.mod_revision();
                let key = String::from_utf8_lossy(kv.key());
                let Some(key) = key.strip_prefix(&self.prefix) else { continue };
                let event = match e.event_type() {
                    EventType::Put => Event::Put(key.to_string(), kv.value().to_vec()),
                    EventType::Delete => Event::Delete(key.to_string()),
                };
                match self.ready.back_mut() {
                    Some(Feed::Batch { rev: r, events }) if *r == rev => events.push(event),
                    _ => self.ready.push_back(Feed::Batch { rev, events: vec![event] }),
                }
                self.after = self.after.max(rev);
            }
        }
        Ok(())
    }
}

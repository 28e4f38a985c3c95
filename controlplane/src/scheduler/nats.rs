//! NATS triggers: one subscription per trigger on the control plane's NATS server; each
//! message calls the trigger's function through an agent's Invoke with the message as
//! the event and `X-Scf-Trigger-Src: nats`. A failed delivery is retried twice (200 ms,
//! 400 ms apart), then logged and shown as the trigger's `error` status until one succeeds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::{lock, Scheduler};
use crate::model::Trigger;

const ATTEMPTS: u32 = 3;

impl Scheduler {
    /// Why the trigger's last delivery (or subscription) failed, if it did.
    pub fn trigger_error(&self, id: &str) -> Option<String> {
        lock(&self.trigger_errors).get(id).cloned()
    }

    fn set_trigger_error(&self, id: &str, error: Option<String>) {
        let mut m = lock(&self.trigger_errors);
        match error {
            Some(e) => drop(m.insert(id.to_string(), e)),
            None => drop(m.remove(id)),
        }
    }

    async fn deliver(&self, t: &Trigger, payload: Vec<u8>) {
        let mut wait = Duration::from_millis(200);
        let mut last = String::new();
        for attempt in 1..=ATTEMPTS {
            match self.invoke(&t.function_id, payload.clone(), "nats").await {
                Ok(status) if status < 500 && status != 429 => {
                    self.set_trigger_error(&t.id, None);
                    return;
                }
                Ok(status) => last = format!("the function answered {status}"),
                Err(e) => last = e.to_string(),
            }
            if attempt < ATTEMPTS {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
        tracing::warn!(trigger = %t.id, subject = %t.subject, error = %last, "message not delivered after {ATTEMPTS} attempts");
        self.set_trigger_error(
            &t.id,
            Some(format!("a message was not delivered after {ATTEMPTS} attempts: {last}")),
        );
    }

    async fn subscription(self: Arc<Self>, client: async_nats::Client, t: Trigger) {
        let mut sub = match client.subscribe(t.subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                self.set_trigger_error(&t.id, Some(format!("cannot subscribe to {:?}: {e}", t.subject)));
                return;
            }
        };
        tracing::info!(trigger = %t.id, subject = %t.subject, "trigger subscribed");
        while let Some(msg) = sub.next().await {
            self.deliver(&t, msg.payload.to_vec()).await;
        }
    }

    /// Keeps one subscription per trigger until the process ends.
    pub async fn run_triggers(self: Arc<Self>) {
        let url = self.cfg.nats_url.clone();
        if url.is_empty() {
            return;
        }
        let mut client: Option<async_nats::Client> = None;
        // Owned: the subscriptions end with this task (when this replica stops leading).
        let mut running: HashMap<String, crate::task::Owned> = HashMap::new();
        let mut changes = self.state.subscribe();
        loop {
            let triggers: Vec<Trigger> = self.state.read(|d| d.triggers.values().cloned().collect());
            if client.is_none() {
                match async_nats::connect(url.as_str()).await {
                    Ok(c) => client = Some(c),
                    Err(e) => {
                        for t in &triggers {
                            self.set_trigger_error(
                                &t.id,
                                Some(format!("cannot reach the NATS server {url}: {e}")),
                            );
                        }
                    }
                }
            }
            if let Some(c) = &client {
                running.retain(|id, task| triggers.iter().any(|t| &t.id == id) && !task.is_finished());
                for t in &triggers {
                    if !running.contains_key(&t.id) {
                        running.insert(
                            t.id.clone(),
                            crate::task::Owned::spawn(self.clone().subscription(c.clone(), t.clone())),
                        );
                    }
                }
            }
            lock(&self.trigger_errors).retain(|id, _| triggers.iter().any(|t| &t.id == id));
            // A trigger's change takes effect at once; an unreachable server or an ended
            // subscription is tried again after a while.
            tokio::select! {
                _ = changes.changed() => {}
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

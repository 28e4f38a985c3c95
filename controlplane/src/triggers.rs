//! Triggers: a NATS subject whose messages call a function (`scw_nats_config`). The
//! subscriptions run in `scheduler::nats`.

use chrono::Utc;
use serde::Deserialize;

use crate::error::Error;
use crate::model::Trigger;
use crate::state::{Change, State};

/// Scaleway's `scw_nats_config`.
#[derive(Debug, Deserialize)]
pub struct NatsConfig {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    mnq_nats_account_id: String,
    #[serde(default)]
    mnq_project_id: String,
    #[serde(default)]
    mnq_region: String,
}

/// Scaleway's Create/UpdateTriggerRequest.
#[derive(Debug, Deserialize)]
pub struct TriggerInput {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    function_id: Option<String>,
    #[serde(default, deserialize_with = "crate::json::opt_object")]
    scw_nats_config: Option<NatsConfig>,
    #[serde(default)]
    scw_sqs_config: Option<serde_json::Value>,
    #[serde(default)]
    sqs_config: Option<serde_json::Value>,
}

/// Checks a NATS subject to subscribe to: dot-separated tokens, `*` and a final `>` allowed.
pub fn check_subject(subject: &str) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    let ok = !subject.is_empty()
        && subject.len() <= 255
        && tokens.iter().all(|t| !t.is_empty() && !t.chars().any(|c| c.is_whitespace() || c.is_control()))
        && tokens.iter().enumerate().all(|(i, t)| *t != ">" || i == tokens.len() - 1)
        && tokens.iter().all(|t| t.len() == 1 || !t.contains(['*', '>']));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{subject:?} is not a NATS subject: dot-separated tokens without spaces, '*' or a final '>'"
        ))
    }
}

/// Creates a trigger; `nats_on` says whether the control plane has a NATS server.
pub async fn create(state: &State, req: TriggerInput, nats_on: bool) -> Result<Trigger, Error> {
    if req.scw_sqs_config.is_some() || req.sqs_config.is_some() {
        return Err(Error::invalid("scw_sqs_config", "SQS triggers are not supported: use scw_nats_config"));
    }
    let nats = req
        .scw_nats_config
        .ok_or_else(|| Error::invalid("scw_nats_config", "a trigger needs scw_nats_config"))?;
    check_subject(&nats.subject).map_err(|m| Error::invalid("scw_nats_config.subject", m))?;
    let function_id =
        req.function_id.ok_or_else(|| Error::invalid("function_id", "a trigger needs its function_id"))?;
    if !nats_on {
        return Err(Error::Precondition("this control plane has no NATS server: set nats_url".into()));
    }
    let t = Trigger {
        id: uuid::Uuid::new_v4().to_string(),
        name: req
            .name
            .unwrap_or_else(|| format!("trigger-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])),
        description: req.description.unwrap_or_default(),
        function_id,
        subject: nats.subject,
        nats_account_id: nats.mnq_nats_account_id,
        project_id: nats.mnq_project_id,
        region: nats.mnq_region,
        created_at: Utc::now(),
    };
    state
        .write(|d| {
            if !crate::functions::live_in(d, &t.function_id) {
                return Err(Error::NotFound { resource: "function", id: t.function_id.clone() });
            }
            Ok((vec![Change::Trigger(t.clone())], t.clone()))
        })
        .await
}

/// The trigger `id`.
pub fn get(state: &State, id: &str) -> Result<Trigger, Error> {
    state
        .read(|d| d.triggers.get(id).cloned())
        .ok_or_else(|| Error::NotFound { resource: "trigger", id: id.to_string() })
}

/// Changes a trigger's name or description.
pub async fn update(state: &State, id: &str, req: TriggerInput) -> Result<Trigger, Error> {
    if req.scw_nats_config.is_some() || req.function_id.is_some() {
        return Err(Error::invalid(
            "scw_nats_config",
            "a trigger's subject and function cannot change: make a new one",
        ));
    }
    state
        .write(|d| {
            let mut t = d
                .triggers
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "trigger", id: id.to_string() })?;
            t.name = req.name.clone().unwrap_or(t.name);
            t.description = req.description.clone().unwrap_or(t.description);
            Ok((vec![Change::Trigger(t.clone())], t))
        })
        .await
}

/// Deletes a trigger: its subscription ends.
pub async fn delete(state: &State, id: &str) -> Result<Trigger, Error> {
    state
        .write(|d| {
            let t = d
                .triggers
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "trigger", id: id.to_string() })?;
            Ok((vec![Change::DeleteTrigger(id.to_string())], t))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_checked() {
        for ok in ["orders", "orders.new", "orders.*", "orders.>", "a.*.c"] {
            assert!(check_subject(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a..b", "a.>.c", "a*", ".a"] {
            assert!(check_subject(bad).is_err(), "{bad}");
        }
    }
}

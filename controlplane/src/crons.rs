//! Crons: schedules that call a function with their `args` as the event. Firing is in
//! `scheduler::timer`.

use chrono::Utc;
use serde::Deserialize;

use crate::error::Error;
use crate::model::{parse_schedule, Cron};
use crate::state::{Change, State};

/// Scaleway's Create/UpdateCronRequest.
#[derive(Debug, Deserialize)]
pub struct CronInput {
    #[serde(default)]
    function_id: Option<String>,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    args: Option<serde_json::Value>,
    #[serde(default)]
    name: Option<String>,
}

fn args_of(
    v: Option<serde_json::Value>,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, Error> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(Error::invalid("args", format!("args must be a JSON object, not {other}"))),
    }
}

/// Creates a cron.
pub async fn create(state: &State, req: CronInput) -> Result<Cron, Error> {
    let function_id =
        req.function_id.ok_or_else(|| Error::invalid("function_id", "a cron needs its function_id"))?;
    let schedule = req
        .schedule
        .ok_or_else(|| Error::invalid("schedule", "a cron needs a schedule, e.g. \"*/5 * * * *\""))?;
    parse_schedule(&schedule).map_err(|m| Error::invalid("schedule", m))?;
    let cron = Cron {
        id: uuid::Uuid::new_v4().to_string(),
        function_id,
        schedule,
        args: args_of(req.args)?.unwrap_or_default(),
        name: req.name.unwrap_or_else(|| format!("cron-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])),
        created_at: Utc::now(),
    };
    state
        .write(|d| {
            if !crate::functions::live_in(d, &cron.function_id) {
                return Err(Error::NotFound { resource: "function", id: cron.function_id.clone() });
            }
            Ok((vec![Change::Cron(cron.clone())], cron.clone()))
        })
        .await
}

/// The cron `id`.
pub fn get(state: &State, id: &str) -> Result<Cron, Error> {
    state
        .read(|d| d.crons.get(id).cloned())
        .ok_or_else(|| Error::NotFound { resource: "cron", id: id.to_string() })
}

/// Changes a cron.
pub async fn update(state: &State, id: &str, req: CronInput) -> Result<Cron, Error> {
    if let Some(s) = &req.schedule {
        parse_schedule(s).map_err(|m| Error::invalid("schedule", m))?;
    }
    let args = args_of(req.args)?;
    state
        .write(|d| {
            let mut c = d
                .crons
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "cron", id: id.to_string() })?;
            if let Some(f) = req.function_id.clone() {
                if !crate::functions::live_in(d, &f) {
                    return Err(Error::NotFound { resource: "function", id: f });
                }
                c.function_id = f;
            }
            c.schedule = req.schedule.clone().unwrap_or(c.schedule);
            c.args = args.clone().unwrap_or(c.args);
            c.name = req.name.clone().unwrap_or(c.name);
            Ok((vec![Change::Cron(c.clone())], c))
        })
        .await
}

/// Deletes a cron.
pub async fn delete(state: &State, id: &str) -> Result<Cron, Error> {
    state
        .write(|d| {
            let c = d
                .crons
                .get(id)
                .cloned()
                .ok_or_else(|| Error::NotFound { resource: "cron", id: id.to_string() })?;
            Ok((vec![Change::DeleteCron(id.to_string())], c))
        })
        .await
}

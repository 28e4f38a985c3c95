//! Fires crons: each due schedule calls its function through an agent's Invoke with
//! `X-Scf-Trigger-Src: Timer`: an event function gets SCF's timer event, an HTTP function
//! the cron's `args` as its body.
//!
//! Only the leader fires, and only after claiming the run in the store: `~cron/<id>`
//! holds the last claimed run's time, and a claim is a compare-and-swap of it guarded by
//! the leader's term. So a run is claimed once across replicas, restarts and failovers; a
//! new leader fires the runs of the last [`GRACE_S`] seconds no one claimed. A replica that
//! dies between its claim and the call loses that run (at most once, never twice).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::Scheduler;
use crate::model::{parse_schedule, Cron};
use crate::store::{Applied, Cond, Fence, Op, StoreError};

/// How far back the leader looks for runs not claimed yet (a failover's gap).
const GRACE_S: i64 = 90;

/// The store key of cron `id`'s last claimed run.
pub(crate) fn claim_key(id: &str) -> String {
    format!("~cron/{id}")
}

/// The trigger source crons call with (`X-Scf-Trigger-Src`), as SCF writes it.
const TIMER: &str = "Timer";

/// What a cron's run sends: to an event function SCF's timer event (`Type`, `TriggerName`,
/// `Time`, and the cron's `args` as the `Message` string); to an HTTP function the args
/// themselves as the JSON body.
pub fn timer_payload(cron: &Cron, event: bool, at: DateTime<Utc>) -> String {
    let args = serde_json::Value::Object(cron.args.clone()).to_string();
    if !event {
        return args;
    }
    serde_json::json!({
        "Type": "Timer",
        "TriggerName": cron.name,
        "Time": at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "Message": args,
    })
    .to_string()
}

/// The latest time of `schedule` in (`after`, `until`].
///
/// Schedules have minutes as their finest field, so the only candidates are the whole
/// minutes in the window, checked latest first. Nothing is searched beyond the window: a
/// schedule that fires once a year (or never) costs no more than one that fires every
/// minute. A search forward to the next run took 0.65 s for `MON */5 ? 2 L` on every tick.
fn latest_due(schedule: &str, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
    use chrono::DurationRound;
    let cron = parse_schedule(schedule).ok()?;
    let minute = chrono::TimeDelta::minutes(1);
    let mut at = until.duration_trunc(minute).ok()?;
    while at > after {
        if cron.is_time_matching(&at).unwrap_or(false) {
            return Some(at);
        }
        at -= minute;
    }
    None
}

/// Whether `schedule` has a time in (`after`, `until`].
#[cfg(test)]
fn due(schedule: &str, after: DateTime<Utc>, until: DateTime<Utc>) -> bool {
    latest_due(schedule, after, until).is_some()
}

/// What a claim found.
enum Claim {
    /// This leader claimed the run.
    Mine,
    /// The run (or a later one) was claimed already, at this time.
    Taken(i64),
    /// Someone wrote meanwhile, or this replica no longer leads: read again.
    Lost,
}

impl Scheduler {
    /// Runs `cron` once; a failure (no instance to call, or the function answered 5xx)
    /// makes its status `error` with the reason until a run succeeds.
    pub(super) async fn fire(self: Arc<Self>, cron: Cron, at: DateTime<Utc>) {
        let event = self.state.read(|d| {
            d.functions.get(&cron.function_id).and_then(|f| f.deployed.as_ref()).is_some_and(|d| d.event)
        });
        let payload = timer_payload(&cron, event, at).into_bytes();
        use crate::metrics::{CRON_ANSWERED_5XX, CRON_CALL_FAILED, CRON_OK};
        let (outcome, failure) = match self.invoke(&cron.function_id, payload, TIMER).await {
            Ok(status) if status < 500 => {
                tracing::info!(cron = %cron.id, status, "cron fired");
                (CRON_OK, None)
            }
            Ok(status) => (
                CRON_ANSWERED_5XX,
                Some(format!("the last run at {} was answered {status}", Utc::now().to_rfc3339())),
            ),
            Err(e) => {
                (CRON_CALL_FAILED, Some(format!("the last run at {} failed: {e}", Utc::now().to_rfc3339())))
            }
        };
        self.metrics.cron_run(outcome);
        let mut errors = super::lock(&self.cron_errors);
        match failure {
            Some(why) => {
                tracing::warn!(cron = %cron.id, error = %why, "cron call failed");
                errors.insert(cron.id, why);
            }
            None => {
                errors.remove(&cron.id);
            }
        }
    }

    /// Forgets what cron `id`'s runs did (it was deleted).
    pub fn forget_cron(&self, id: &str) {
        super::lock(&self.cron_errors).remove(id);
    }

    /// Why cron `id`'s last run failed, while no later run succeeded.
    pub fn cron_error(&self, id: &str) -> Option<String> {
        super::lock(&self.cron_errors).get(id).cloned()
    }

    /// Checks the crons every second while this replica leads in term `fence`.
    pub async fn run_timer(self: Arc<Self>, fence: Fence) {
        // The latest run known claimed, by cron: the store is asked only past it.
        let mut claimed: HashMap<String, i64> = HashMap::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = Utc::now();
            let crons: Vec<Cron> = self.state.read(|d| d.crons.values().cloned().collect());
            claimed.retain(|id, _| crons.iter().any(|c| &c.id == id));
            for cron in crons {
                // Not before it was made: a new cron does not catch up on earlier times.
                let after = (now - chrono::Duration::seconds(GRACE_S)).max(cron.created_at);
                let Some(at) = latest_due(&cron.schedule, after, now) else { continue };
                if claimed.get(&cron.id).is_some_and(|c| *c >= at.timestamp()) {
                    continue;
                }
                match self.claim(&cron.id, at.timestamp(), fence).await {
                    Ok(Claim::Mine) => {
                        claimed.insert(cron.id.clone(), at.timestamp());
                        tokio::spawn(self.clone().fire(cron, at));
                    }
                    Ok(Claim::Taken(t)) => drop(claimed.insert(cron.id.clone(), t)),
                    Ok(Claim::Lost) => {}
                    Err(e) => tracing::warn!(cron = %cron.id, error = %e, "cannot claim the cron's run"),
                }
            }
        }
    }

    /// Claims the run of cron `id` at `at` (unix seconds) in term `fence`.
    async fn claim(&self, id: &str, at: i64, fence: Fence) -> Result<Claim, StoreError> {
        let key = claim_key(id);
        let store = self.state.store();
        let last = store.get(&key).await?;
        let last_at = last.as_deref().and_then(|v| std::str::from_utf8(v).ok()?.parse::<i64>().ok());
        if let Some(t) = last_at.filter(|t| *t >= at) {
            return Ok(Claim::Taken(t));
        }
        let conds = vec![Cond::Leader(fence), Cond::Value(key.clone(), last)];
        match store.apply_if(conds, vec![Op::Put(key, format!("{at:012}").into_bytes())]).await? {
            Applied::Done(_) => Ok(Claim::Mine),
            Applied::Conflict(_) => Ok(Claim::Lost),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_function_gets_scf_timer_events_and_an_http_function_the_args() {
        let cron = Cron {
            id: "c".into(),
            function_id: "f".into(),
            schedule: "* * * * *".into(),
            args: serde_json::from_str(r#"{"job":"nightly"}"#).unwrap_or_default(),
            name: "every-minute".into(),
            created_at: Utc::now(),
        };
        let Ok(at) = DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z") else { panic!("a time") };
        let at = at.with_timezone(&Utc);
        assert_eq!(timer_payload(&cron, false, at), r#"{"job":"nightly"}"#);
        let event: serde_json::Value =
            serde_json::from_str(&timer_payload(&cron, true, at)).unwrap_or_default();
        assert_eq!(
            event,
            serde_json::json!({
                "Type": "Timer", "TriggerName": "every-minute", "Time": "2026-01-01T00:01:00Z",
                "Message": "{\"job\":\"nightly\"}",
            })
        );
    }

    #[test]
    fn a_schedule_is_due_once_per_occurrence() {
        let t = |s: &str| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc));
        let (Ok(a), Ok(b), Ok(c)) =
            (t("2026-01-01T00:00:59Z"), t("2026-01-01T00:01:00Z"), t("2026-01-01T00:01:01Z"))
        else {
            panic!("times parse")
        };
        assert!(due("* * * * *", a, b));
        assert!(!due("* * * * *", b, c));
        assert!(!due("*/5 * * * *", a, b));
        let (Ok(d), Ok(e)) = (t("2026-01-01T00:00:00Z"), t("2026-01-01T00:02:30Z")) else {
            panic!("times parse")
        };
        assert_eq!(latest_due("* * * * *", d, e), t("2026-01-01T00:02:00Z").ok());
        // 00:00 is not in (00:00, 00:02:30].
        assert_eq!(latest_due("*/5 * * * *", d, e), None);
        // Rare schedules are due on their minute, found without a search beyond the window.
        let window = |from: &str, to: &str| (t(from).expect("a time"), t(to).expect("a time"));
        let (y0, y1) = window("2026-12-31T23:59:30Z", "2027-01-01T00:00:30Z");
        assert_eq!(latest_due("0 0 1 1 *", y0, y1), t("2027-01-01T00:00:00Z").ok());
        assert!(!due("0 0 1 1 *", y1, y1 + chrono::Duration::seconds(90)));
        let (m0, m1) = window("2026-01-05T12:29:00Z", "2026-01-05T12:30:00Z"); // a Monday
        assert!(due("30 12 * * MON", m0, m1) && !due("30 12 * * TUE", m0, m1));
        let (l0, l1) = window("2028-02-29T08:59:59Z", "2028-02-29T09:00:00Z");
        assert!(due("0 9 29 2 *", l0, l1) && due("0 */3 L 2 *", l0, l1));
        // The schedule a fuzzer found taking 0.65 s with a forward search.
        let started = std::time::Instant::now();
        assert!(!due("MON */5 ? 2 L", d, e));
        assert!(started.elapsed() < std::time::Duration::from_millis(50), "{:?}", started.elapsed());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fuzz {
    use super::*;

    /// Any schedule a user may send: refused, or due-checked fast (the timer checks every
    /// cron every second), never a panic.
    #[test]
    fn fuzz_cron_schedules() {
        let fields = [
            "*",
            "*/5",
            "0",
            "59",
            "60",
            "1-5",
            "5-1",
            "31",
            "2",
            "L",
            "W",
            "#",
            "?",
            "MON",
            "1,2",
            "*/0",
            "99999999999",
        ];
        let now = Utc::now();
        fnrt_common::fuzz::run("cron", |u| {
            let schedule: String = if u.arbitrary()? {
                u.arbitrary()?
            } else {
                let n = u.int_in_range(4..=6)?;
                (0..n).map(|_| u.choose(&fields).copied()).collect::<Result<Vec<_>, _>>()?.join(" ")
            };
            let t0 = std::time::Instant::now();
            let _ = due(&schedule, now, now + chrono::Duration::seconds(1));
            assert!(t0.elapsed() < Duration::from_millis(500), "{schedule:?} took {:?}", t0.elapsed());
            Ok(())
        });
    }
}

//! `GET /fnrt/v1/functions/{id}/logs` (admin key): a function's log lines gathered from
//! every agent, each with its node. `request_id` keeps the lines of one call, `since`
//! (RFC 3339) those from a time on, `limit` the newest N (default 1000, at most 10000).
//! Without `follow`: `{"logs": [...], "total_count": N}`, ordered by time. With
//! `follow=true`: one JSON line per log line (`application/x-ndjson`), the lines kept
//! first, then new ones as agents read them, until the caller goes.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State as AxState};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::list::ListQuery;
use super::ApiError;
use crate::error::Error;
use crate::scheduler::logs::LogQuery;
use crate::{functions, Ctx};

const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;
/// How long the lines kept are read for, at most, without `follow`.
const READ_FOR: Duration = Duration::from_secs(15);

fn line(node: &str, l: &fnrt_proto::agent::v1::LogLine) -> Value {
    json!({
        "time": l.time, "node": node, "instance": l.instance, "stream": l.stream,
        "request_ids": l.request_ids, "line": l.line,
    })
}

/// The handler.
pub async fn logs(
    AxState(ctx): AxState<Arc<Ctx>>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    functions::get(&ctx.state, &id)?;
    let q = ListQuery::parse(q.as_deref(), &["created_at_asc"])?;
    let limit = match q.given("limit") {
        None => DEFAULT_LIMIT,
        Some(n) => n.parse().ok().filter(|n| (1..=MAX_LIMIT).contains(n)).ok_or_else(|| {
            Error::invalid("limit", format!("{n:?} is not a count of lines from 1 to {MAX_LIMIT}"))
        })?,
    };
    if let Some(since) = q.given("since") {
        chrono::DateTime::parse_from_rfc3339(since).map_err(|_| {
            Error::invalid("since", format!("{since:?} is not an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"))
        })?;
    }
    let follow = match q.given("follow") {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(Error::invalid("follow", format!("{other:?} is not true or false")).into()),
    };
    let query = LogQuery {
        request_id: q.filter("request_id").unwrap_or_default().to_string(),
        since: q.filter("since").unwrap_or_default().to_string(),
        follow,
    };
    let streams = ctx.scheduler.logs(&id, &query).await;
    if follow {
        let merged = futures_util::stream::select_all(streams.into_iter().map(|(node, s)| {
            s.filter_map(move |l| {
                let node = node.clone();
                async move { l.ok().map(|l| Ok::<_, std::io::Error>(format!("{}\n", line(&node, &l)))) }
            })
            .boxed()
        }));
        let headers = [("content-type", "application/x-ndjson")];
        return Ok((headers, Body::from_stream(merged)).into_response());
    }
    let mut lines: Vec<(String, Value)> = Vec::new();
    let reads = streams.into_iter().map(|(node, mut s)| async move {
        let mut out = Vec::new();
        let _ = tokio::time::timeout(READ_FOR, async {
            while let Some(Ok(l)) = s.next().await {
                out.push((l.time.clone(), line(&node, &l)));
            }
        })
        .await;
        out
    });
    for part in futures_util::future::join_all(reads).await {
        lines.extend(part);
    }
    // RFC 3339 times in UTC with nanoseconds sort as text.
    lines.sort_by(|a, b| a.0.cmp(&b.0));
    let skip = lines.len().saturating_sub(limit);
    let logs: Vec<Value> = lines.into_iter().skip(skip).map(|(_, v)| v).collect();
    let n = logs.len();
    Ok(axum::Json(json!({ "logs": logs, "total_count": n })).into_response())
}

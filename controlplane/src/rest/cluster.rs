//! The operator's view of the cluster, beside Scaleway's API (admin key too):
//! `GET /fnrt/v1/agents` (capacity, state, functions of each agent) and
//! `GET /fnrt/v1/placement` (where each function runs), `GET /fnrt/v1/replica` (this
//! replica: whether it leads).

use std::sync::Arc;

use axum::extract::State as AxState;
use axum::Json;
use serde_json::{json, Value};

use crate::Ctx;

/// Every agent that joined, lost ones included.
pub async fn agents(AxState(ctx): AxState<Arc<Ctx>>) -> Json<Value> {
    let agents: Vec<Value> = ctx
        .scheduler
        .agents()
        .iter()
        .map(|a| {
            json!({
                "node": a.node,
                "dataplane": a.dataplane,
                "state": if a.lost { "lost" } else { "ready" },
                "last_seen_ms_ago": a.last_seen.elapsed().as_millis() as u64,
                "architecture": a.report.architecture,
                "cpus": a.report.cpus,
                "memory_mb": a.report.memory_bytes >> 20,
                "memory_reserved_mb": a.report.memory_reserved_mb,
                "cpu_reserved_millis": a.report.cpu_reserved_millis,
                "images": a.report.images.len(),
                "sandbox_classes": a.classes(),
                "functions": a.report.functions.iter().map(|f| json!({
                    "name": f.name, "ready": f.ready, "starting": f.starting,
                    "in_flight": f.in_flight, "queued": f.queued,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "agents": agents, "total_count": agents.len() }))
}

/// This replica: whether it leads and in which term, its store, the revision its maps
/// reflect.
pub async fn replica(AxState(ctx): AxState<Arc<Ctx>>) -> Json<Value> {
    let fence = *ctx.leading.borrow();
    let (passes, last_pass_us) = ctx.scheduler.passes();
    Json(json!({
        "reconcile_passes": passes,
        "last_reconcile_us": last_pass_us,
        "leading": fence.is_some(),
        "term": fence.map(|f| f.rev),
        "store": if ctx.cfg.store == "etcd" { "etcd" } else { "redb" },
        "revision": ctx.state.rev(),
    }))
}

/// Each function with the agents that run it and their ready instances.
pub async fn placement(AxState(ctx): AxState<Arc<Ctx>>) -> Json<Value> {
    let agents = ctx.scheduler.agents();
    let functions: Vec<Value> = ctx.state.read(|d| {
        d.functions
            .values()
            .map(|f| {
                let name = f.agent_name();
                let ns = d.namespaces.get(&f.namespace_id).map_or("", |n| n.name.as_str());
                let on: Vec<Value> = agents
                    .iter()
                    .filter(|a| !a.lost)
                    .filter_map(|a| a.report.functions.iter().find(|l| l.name == name).map(|l| (a, l)))
                    .map(|(a, l)| json!({ "node": a.node, "ready": l.ready, "in_flight": l.in_flight }))
                    .collect();
                json!({
                    "id": f.id, "namespace": ns, "name": f.name, "status": crate::rest::views::status(f),
                    "min_scale": f.min_scale, "max_scale": f.max_scale, "agents": on,
                    "sandbox_class": d.namespaces.get(&f.namespace_id).map_or_else(
                        || crate::sandbox::effective(f.sandbox_class, None),
                        |n| f.sandbox_class_in(n),
                    ),
                })
            })
            .collect()
    });
    Json(json!({ "functions": functions, "total_count": functions.len() }))
}

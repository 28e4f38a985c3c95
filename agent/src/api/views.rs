//! The gRPC API's views: the agent's types as the proto shows them, and the proto's
//! requests as the agent's types (no work is done here).

use fnrt_proto::agent::v1 as pb;
use tonic::Status;

use super::status;
use crate::error::Error;
use crate::image::{ImageInfo, PullEvent};
use crate::instance::{Instance, NodeImage};

pub(super) fn progress_message(e: PullEvent) -> pb::PullProgress {
    let layer = |digest, bytes, total| pb::Layer { digest, bytes, total };
    match e {
        PullEvent::Resolved { layers } => pb::PullProgress {
            phase: "resolved".into(),
            layers: layers.into_iter().map(|(d, t)| layer(d, 0, t)).collect(),
            ..Default::default()
        },
        PullEvent::Layer { digest, bytes, total } => pb::PullProgress {
            phase: "downloading".into(),
            layer: Some(layer(digest, bytes, total)),
            ..Default::default()
        },
        PullEvent::Unpacking => pb::PullProgress { phase: "unpacking".into(), ..Default::default() },
        PullEvent::Done(info) => pb::PullProgress {
            phase: "done".into(),
            image: Some(pb::Image { ready: true, ..image(info) }),
            ..Default::default()
        },
    }
}

pub(super) fn node_image(n: NodeImage) -> pb::Image {
    let c = n.image;
    pb::Image {
        last_used: c.last_used.map(|t| humantime::format_rfc3339_seconds(t).to_string()).unwrap_or_default(),
        pinned: c.pinned,
        ready: c.ready,
        used_by: n.used_by,
        ..image(c.info)
    }
}

pub(super) fn instance(i: Instance) -> pb::Instance {
    pb::Instance {
        id: i.id,
        function: i.function,
        image: i.image,
        address: i.address.to_string(),
        state: i.state,
        pid: i.pid,
        created_at: humantime::format_rfc3339_seconds(i.created_at).to_string(),
        memory_mb: i.limits.memory_mb,
        cpu_millis: i.limits.cpu_millis,
        pids_limit: i.limits.pids,
        memory_used_bytes: i.usage.memory_bytes,
        cpu_used_ns: i.usage.cpu_ns,
        reason: i.reason,
        sandbox_class: i.class.to_string(),
        start_phases: i
            .phases
            .0
            .iter()
            .map(|(name, d)| pb::Phase { name: (*name).into(), ms: d.as_secs_f64() * 1000.0 })
            .collect(),
    }
}

/// A function spec from the API, not yet checked.
pub(super) fn raw_spec(f: Option<pb::FunctionSpec>) -> Result<crate::pool::RawSpec, Status> {
    let f = f.ok_or_else(|| {
        status(Error::InvalidArgument { field: "function", reason: "the function spec is missing".into() })
    })?;
    crate::pool::RawSpec::try_from(f).map_err(|e| status(e.into()))
}

/// A pool as the API shows it: no secret values.
pub(super) fn function(v: crate::pool::FunctionView) -> pb::Function {
    let s = &v.spec;
    pb::Function {
        spec: Some(s.to_proto_redacted()),
        secret_names: s.secrets.0.keys().cloned().collect(),
        ready: v.ready,
        starting: v.starting,
        in_flight: v.in_flight,
        queued: v.queued,
        instances: v.instances,
        last_error: v.last_error,
    }
}

/// The filter a StreamLogs request asks for, checked.
pub(super) fn log_filter(r: &pb::StreamLogsRequest) -> Result<crate::logs::Filter, Error> {
    let name_ok = |s: &str| s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !r.function.is_empty() {
        crate::instance::validate_function_name(&r.function)?;
    }
    if !name_ok(&r.instance) {
        return Err(Error::InvalidArgument {
            field: "instance",
            reason: format!("{:?} is not an instance id (<function>-<8 hex digits>)", r.instance),
        });
    }
    let since_ns = if r.since.is_empty() {
        0
    } else {
        let t = humantime::parse_rfc3339_weak(&r.since).map_err(|e| Error::InvalidArgument {
            field: "since",
            reason: format!("{:?} is not an RFC 3339 time (e.g. 2026-01-02T03:04:05Z): {e}", r.since),
        })?;
        t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
    };
    let some = |s: &str| Some(s.to_string()).filter(|s| !s.is_empty());
    Ok(crate::logs::Filter {
        function: some(&r.function),
        instance: some(&r.instance),
        request_id: some(&r.request_id),
        since_ns,
    })
}

pub(super) fn log_line(l: &crate::logs::LogLine) -> pb::LogLine {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(l.time_ns);
    pb::LogLine {
        time: humantime::format_rfc3339_nanos(t).to_string(),
        stream: l.stream.clone(),
        instance: l.instance.clone(),
        function: l.function.clone(),
        request_ids: l.request_ids.clone(),
        line: l.line.clone(),
    }
}

pub(super) fn image(i: ImageInfo) -> pb::Image {
    pb::Image { reference: i.reference, digest: i.digest, size_bytes: i.size_bytes, ..Default::default() }
}

//! Printing answers: aligned tables for people, JSON for scripts.

use fnrt_proto::agent::v1 as pb;
use serde_json::{json, Value};

/// Prints rows under a header, columns aligned.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

/// Prints a JSON value, pretty.
pub fn json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// A sandbox class as the agent names it; empty (an agent older than classes): `runc`.
pub fn sandbox_class(name: &str) -> &str {
    if name.is_empty() {
        fnrt_function::SandboxClass::Runc.as_str()
    } else {
        name
    }
}

/// The classes a node offers as it names them; none (an agent older than classes): `runc`.
/// Names this agentctl does not know are shown as they are.
pub fn sandbox_classes(names: &[String]) -> Vec<String> {
    if names.is_empty() {
        vec![fnrt_function::SandboxClass::Runc.as_str().to_string()]
    } else {
        names.to_vec()
    }
}

/// An instance as JSON.
pub fn instance_json(i: &pb::Instance) -> Value {
    json!({
        "id": i.id, "function": i.function, "image": i.image, "address": i.address,
        "state": i.state, "pid": i.pid, "created_at": i.created_at,
        "memory_mb": i.memory_mb, "cpu_millis": i.cpu_millis, "pids_limit": i.pids_limit,
        "memory_used_bytes": i.memory_used_bytes, "cpu_used_ns": i.cpu_used_ns,
        "sandbox_class": sandbox_class(&i.sandbox_class),
    })
}

/// An instance as a table row.
pub fn instance_row(i: &pb::Instance) -> Vec<String> {
    vec![
        i.id.clone(),
        i.function.clone(),
        i.state.clone(),
        sandbox_class(&i.sandbox_class).to_string(),
        i.address.clone(),
        format!("{:.1}/{} MB", i.memory_used_bytes as f64 / f64::from(1 << 20), i.memory_mb),
        format!("{:.2}", f64::from(i.cpu_millis) / 1000.0),
        format!("{:.2}s", i.cpu_used_ns as f64 / 1e9),
        i.image.clone(),
        i.created_at.clone(),
    ]
}

/// Header of instance tables.
pub const INSTANCE_HEADER: &[&str] =
    &["ID", "FUNCTION", "STATE", "SANDBOX", "ADDRESS", "MEMORY", "VCPU", "CPU TIME", "IMAGE", "CREATED"];

/// An image as JSON.
pub fn image_json(i: &pb::Image) -> Value {
    json!({
        "reference": i.reference, "digest": i.digest, "size_bytes": i.size_bytes,
        "last_used": i.last_used, "pinned": i.pinned, "ready": i.ready, "used_by": i.used_by,
    })
}

/// An image as a table row.
pub fn image_row(i: &pb::Image) -> Vec<String> {
    vec![
        i.reference.clone(),
        short_digest(&i.digest),
        human_bytes(i.size_bytes),
        if i.last_used.is_empty() { "-".into() } else { i.last_used.clone() },
        if i.pinned { "yes" } else { "no" }.into(),
        if i.ready { "yes" } else { "no" }.into(),
        if i.used_by.is_empty() { "-".into() } else { i.used_by.join(",") },
    ]
}

/// Header of image tables.
pub const IMAGE_HEADER: &[&str] = &["REFERENCE", "DIGEST", "SIZE", "LAST USED", "PINNED", "READY", "USED BY"];

fn short_digest(d: &str) -> String {
    d.strip_prefix("sha256:").map_or_else(|| d.to_string(), |h| h.chars().take(12).collect())
}

/// Bytes in KiB/MiB/GiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

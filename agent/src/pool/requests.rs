//! How a pool's spec becomes an instance's start request, and back for instances started
//! on their own.

use fnrt_function::spec::MAX_TIMEOUT_MS;
use fnrt_function::{FunctionSpec, Policy, RawSpec};

use crate::error::Error;
use crate::instance::StartRequest;

/// How an instance of `spec` is started.
pub fn start_request(spec: &FunctionSpec) -> StartRequest {
    StartRequest {
        function: spec.name.clone(),
        display_name: spec.display_name.clone(),
        image: spec.image.clone(),
        env: spec.env.clone(),
        secrets: spec.secrets.clone(),
        version: spec.version.clone(),
        namespace: spec.namespace.clone(),
        memory_mb: spec.memory_mb,
        timeout_ms: u32::try_from(spec.timeout.as_millis()).unwrap_or(MAX_TIMEOUT_MS),
        process: spec.process.clone(),
        credentials: spec.pull_credentials.clone(),
        class: spec.sandbox_class,
    }
}

/// The spec calls to the instances of `req`'s function (started on their own with
/// StartInstance, not deployed) are served with: HTTP, the request's timeout.
pub fn spec_of_started(req: &StartRequest, policy: &Policy) -> Result<FunctionSpec, Error> {
    let raw = RawSpec {
        name: req.function.clone(),
        namespace: req.namespace.clone(),
        version: req.version.clone(),
        image: req.image.clone(),
        event: false,
        memory_mb: req.memory_mb,
        timeout_ms: req.timeout_ms,
        env: req.env.clone(),
        secrets: req.secrets.0.clone(),
        display_name: req.display_name.clone(),
        process: req.process.clone(),
        sandbox_class: req.class.as_str().into(),
        ..RawSpec::default()
    };
    Ok(raw.check(policy)?)
}

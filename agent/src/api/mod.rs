//! The gRPC edge: converts requests into calls on the core and answers back. Nothing here
//! decides anything; [`status`] is the one mapping from core errors to gRPC codes.

use std::sync::Arc;

use fnrt_proto::agent::v1 as pb;
use fnrt_proto::agent::v1::agent_server::Agent as AgentApi;
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};

use crate::containerd::ContainerdError;
use crate::error::Error;
use crate::image::{ContentError, ExtractError, ImageError, Progress, PullEvent, RegistryError, UnpackError};
use crate::instance::{Instance, StartRequest};
use crate::network::NetworkError;
use crate::runtime::RuntimeError;
use crate::Node;
use views::{function, instance, log_filter, log_line, node_image, progress_message, raw_spec};

mod views;

/// The largest answer an Invoke returns: 6 MB, the synchronous limit of SCF and Scaleway.
const MAX_INVOKE_ANSWER: usize = 6_000_000;

/// Why an Invoke's answer was not read whole.
enum Cut {
    /// It is over [`MAX_INVOKE_ANSWER`] bytes.
    TooLarge,
    /// The function's timeout passed (the body ends with that error).
    Overran,
    /// Reading it failed.
    Failed(String),
}

/// `body` whole, at most [`MAX_INVOKE_ANSWER`] bytes.
async fn capped(mut body: crate::upstream::Body) -> Result<Vec<u8>, Cut> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| match e.is::<crate::deadline::Overran>() {
            true => Cut::Overran,
            false => Cut::Failed(e.to_string()),
        })?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > MAX_INVOKE_ANSWER {
                return Err(Cut::TooLarge);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// The tonic service over a node.
pub struct Api {
    node: Arc<Node>,
}

impl Api {
    /// The service of `node`.
    pub fn new(node: Arc<Node>) -> Api {
        Api { node }
    }
}

#[tonic::async_trait]
impl AgentApi for Api {
    async fn node_status(
        &self,
        _: Request<pb::NodeStatusRequest>,
    ) -> Result<Response<pb::NodeStatusResponse>, Status> {
        let s = self.node.status().await.map_err(status)?;
        // Ended instances are listed too, but hold nothing.
        let live: Vec<&Instance> = s.instances.iter().filter(|i| i.reason.is_empty()).collect();
        let memory_reserved_mb = live.iter().map(|i| u64::from(i.limits.memory_mb)).sum();
        let cpu_reserved_millis = live.iter().map(|i| u64::from(i.limits.cpu_millis)).sum();
        let memory_used_bytes = live.iter().map(|i| i.usage.memory_bytes).sum();
        Ok(Response::new(pb::NodeStatusResponse {
            cpus: s.cpus,
            memory_bytes: s.memory_bytes,
            memory_reserved_mb,
            cpu_reserved_millis,
            memory_used_bytes,
            agent_version: s.agent_version,
            containerd_version: s.containerd_version,
            architecture: s.architecture,
            namespace: s.namespace,
            dataplane_address: s.dataplane_address,
            instances: s.instances.into_iter().map(instance).collect(),
            images: s.images.into_iter().map(node_image).collect(),
            sandbox_classes: s.sandbox_classes.iter().map(|c| c.to_string()).collect(),
        }))
    }

    type PullImageStream = ReceiverStream<Result<pb::PullProgress, Status>>;
    type PrefetchImageStream = ReceiverStream<Result<pb::PullProgress, Status>>;

    #[tracing::instrument(skip_all, fields(reference = %req.get_ref().reference))]
    async fn pull_image(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullImageStream>, Status> {
        Ok(Response::new(self.spawn_pull(req.into_inner().reference, None)))
    }

    #[tracing::instrument(skip_all, fields(reference = %req.get_ref().reference))]
    async fn prefetch_image(
        &self,
        req: Request<pb::PrefetchImageRequest>,
    ) -> Result<Response<Self::PrefetchImageStream>, Status> {
        let r = req.into_inner();
        let credentials = r.registry_credentials.map(fnrt_function::PullCredentials::from);
        Ok(Response::new(self.spawn_pull(r.reference, Some((r.pin, credentials)))))
    }

    async fn list_images(
        &self,
        _: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let (images, cache_bytes, budget_bytes) =
            self.node.instances.cached_images().await.map_err(status)?;
        let images = images.into_iter().map(node_image).collect();
        Ok(Response::new(pb::ListImagesResponse { images, cache_bytes, budget_bytes }))
    }

    #[tracing::instrument(skip_all, fields(reference = %req.get_ref().reference))]
    async fn remove_image(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::RemoveImageResponse>, Status> {
        self.node.instances.remove_image(&req.into_inner().reference).await.map_err(status)?;
        Ok(Response::new(pb::RemoveImageResponse {}))
    }

    #[tracing::instrument(skip_all, fields(function = %req.get_ref().function, image = %req.get_ref().image))]
    async fn start_instance(
        &self,
        req: Request<pb::StartInstanceRequest>,
    ) -> Result<Response<pb::StartInstanceResponse>, Status> {
        let r = req.into_inner();
        let start = StartRequest {
            function: r.function,
            display_name: String::new(),
            image: r.image,
            env: r.env.into_iter().collect(),
            memory_mb: r.memory_mb,
            secrets: crate::env::Secrets(r.secrets.into_iter().collect()),
            version: r.version,
            namespace: r.namespace,
            timeout_ms: r.timeout_ms,
            process: fnrt_function::Process { command: r.command, args: r.args },
            credentials: None, // started on its own: the node's credentials
            class: fnrt_function::SandboxClass::from_wire(&r.sandbox_class).map_err(|e| {
                status(Error::InvalidArgument { field: "sandbox_class", reason: e.to_string() })
            })?,
        };
        // On a task of its own: a caller that goes away must not cut a start half-way and
        // leave a namespace or container behind.
        let pools = self.node.pools.clone();
        let (inst, advice) = tokio::spawn(async move { pools.start_instance(start).await })
            .await
            .map_err(|e| Status::internal(format!("start task failed: {e}")))?
            .map_err(status)?;
        let warnings = advice.into_iter().collect();
        Ok(Response::new(pb::StartInstanceResponse { instance: Some(instance(inst)), warnings }))
    }

    #[tracing::instrument(skip_all, fields(id = %req.get_ref().id))]
    async fn stop_instance(
        &self,
        req: Request<pb::StopInstanceRequest>,
    ) -> Result<Response<pb::StopInstanceResponse>, Status> {
        // On a task of its own, like a start: a teardown is never cut half-way.
        let (pools, id) = (self.node.pools.clone(), req.into_inner().id);
        tokio::spawn(async move { pools.stop_instance(&id).await })
            .await
            .map_err(|e| Status::internal(format!("stop task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::StopInstanceResponse {}))
    }

    #[tracing::instrument(skip_all, fields(function = %req.get_ref().function.as_ref().map_or("", |f| f.name.as_str())))]
    async fn deploy_function(
        &self,
        req: Request<pb::DeployFunctionRequest>,
    ) -> Result<Response<pb::DeployFunctionResponse>, Status> {
        let raw = raw_spec(req.into_inner().function)?;
        // On a task of its own: a caller that goes away must not cut a deploy half-way.
        let pools = self.node.pools.clone();
        let (view, warnings) = tokio::spawn(async move { pools.deploy(raw).await })
            .await
            .map_err(|e| Status::internal(format!("deploy task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::DeployFunctionResponse { function: Some(function(view)), warnings }))
    }

    #[tracing::instrument(skip_all, fields(function = %req.get_ref().function.as_ref().map_or("", |f| f.name.as_str())))]
    async fn update_function(
        &self,
        req: Request<pb::UpdateFunctionRequest>,
    ) -> Result<Response<pb::UpdateFunctionResponse>, Status> {
        let raw = raw_spec(req.into_inner().function)?;
        let pools = self.node.pools.clone();
        let (view, warnings) = tokio::spawn(async move { pools.update(raw).await })
            .await
            .map_err(|e| Status::internal(format!("update task failed: {e}")))?
            .map_err(status)?;
        Ok(Response::new(pb::UpdateFunctionResponse { function: Some(function(view)), warnings }))
    }

    async fn remove_function(
        &self,
        req: Request<pb::RemoveFunctionRequest>,
    ) -> Result<Response<pb::RemoveFunctionResponse>, Status> {
        self.node.pools.remove(&req.into_inner().name).map_err(status)?;
        Ok(Response::new(pb::RemoveFunctionResponse {}))
    }

    async fn list_functions(
        &self,
        _req: Request<pb::ListFunctionsRequest>,
    ) -> Result<Response<pb::ListFunctionsResponse>, Status> {
        let functions = self.node.pools.list().into_iter().map(function).collect();
        Ok(Response::new(pb::ListFunctionsResponse { functions }))
    }

    async fn invoke(&self, req: Request<pb::InvokeRequest>) -> Result<Response<pb::InvokeResponse>, Status> {
        let mut r = req.into_inner();
        let request_id = match std::mem::take(&mut r.request_id) {
            id if id.is_empty() => crate::request_id::new(),
            id if crate::request_id::valid(&id) => id,
            _ => {
                return Err(Status::invalid_argument(
                    "request_id must be 1 to 128 characters of A-Z, a-z, 0-9, '-', '_', '.' and ':'",
                ))
            }
        };
        let function = r.function.clone();
        let call = invocation(r)?;
        let arrived = std::time::Instant::now();
        let answer = self
            .node
            .dataplane
            .invoke(&function, call, &request_id)
            .await
            .ok_or_else(|| status(Error::FunctionNotFound(function.clone())))?;
        let code = answer.response.status().as_u16();
        // The function's timeout covers its whole answer, which may be 6 MB at most (the
        // synchronous limit of SCF and Scaleway): an endless answer ends here.
        let read = tokio::time::timeout_at(answer.deadline.into(), capped(answer.response.into_body())).await;
        let body = match read.unwrap_or(Err(Cut::Overran)) {
            Ok(body) => body,
            Err(Cut::Overran) => {
                let why = format!("function {function} did not finish its answer within its timeout");
                return Err(Status::deadline_exceeded(why));
            }
            Err(Cut::TooLarge) => {
                let why = format!(
                    "the answer of {function} is over {MAX_INVOKE_ANSWER} bytes, the limit of a synchronous call"
                );
                return Err(Status::resource_exhausted(why));
            }
            Err(Cut::Failed(e)) => {
                return Err(Status::unavailable(format!("reading the answer of {function}: {e}")))
            }
        };
        let duration_ms = arrived.elapsed().as_secs_f64() * 1000.0;
        let logs = match answer.instance {
            None => Vec::new(),
            Some(instance) => {
                // Output reaches the agent a moment after it is written.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let filter = crate::logs::Filter {
                    instance: Some(instance.to_string()),
                    request_id: Some(request_id.clone()),
                    ..Default::default()
                };
                let l = self.node.instances.logs().clone();
                let lines = tokio::task::spawn_blocking(move || l.read(&filter)).await.unwrap_or_default();
                lines.iter().map(log_line).collect()
            }
        };
        Ok(Response::new(pb::InvokeResponse {
            status: u32::from(code),
            body,
            duration_ms,
            request_id,
            logs,
            cold_start: answer.cold,
            cold_start_phases: answer
                .anatomy
                .iter()
                .map(|(name, d)| pb::Phase { name: (*name).into(), ms: d.as_secs_f64() * 1000.0 })
                .collect(),
        }))
    }

    type StreamLogsStream = ReceiverStream<Result<pb::LogLine, Status>>;

    async fn stream_logs(
        &self,
        req: Request<pb::StreamLogsRequest>,
    ) -> Result<Response<Self::StreamLogsStream>, Status> {
        let r = req.into_inner();
        let filter = log_filter(&r).map_err(status)?;
        let logs = self.node.instances.logs().clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(crate::logs::stream(logs, filter, r.follow, tx, |l| Ok(log_line(l))));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn list_instances(
        &self,
        req: Request<pb::ListInstancesRequest>,
    ) -> Result<Response<pb::ListInstancesResponse>, Status> {
        let f = req.into_inner().function;
        let list =
            self.node.instances.list(Some(f.as_str()).filter(|f| !f.is_empty())).await.map_err(status)?;
        Ok(Response::new(pb::ListInstancesResponse { instances: list.into_iter().map(instance).collect() }))
    }
}

impl Api {
    /// Runs a pull (or a prefetch, with `pin`) on its own task, so that a client that
    /// goes away does not cut it half-way, and streams its progress.
    fn spawn_pull(
        &self,
        reference: String,
        prefetch: Option<(bool, Option<fnrt_function::PullCredentials>)>,
    ) -> ReceiverStream<Result<pb::PullProgress, Status>> {
        let (tx, rx) = mpsc::channel(64);
        let node = self.node.clone();
        tokio::spawn(async move {
            let (progress, mut events) = Progress::channel();
            let fwd = tx.clone();
            let forwarder = tokio::spawn(async move {
                while let Some(e) = events.recv().await {
                    let _ = fwd.send(Ok(progress_message(e))).await;
                }
            });
            let result = match prefetch {
                None => node.instances.pull_image(&reference, &progress).await,
                Some((pin, c)) => node.instances.prefetch(&reference, pin, c.as_ref(), &progress).await,
            };
            drop(progress);
            let _ = forwarder.await;
            // "done" comes only once the cache has settled (evictions included).
            let last = result.map(|info| progress_message(PullEvent::Done(info))).map_err(status);
            let _ = tx.send(last).await;
        });
        ReceiverStream::new(rx)
    }
}

/// The one mapping from the core's errors to gRPC statuses; the message keeps the whole
/// cause chain.
pub fn status(e: Error) -> Status {
    let code = match &e {
        Error::InvalidArgument { .. } | Error::Spec(_) => Code::InvalidArgument,
        Error::InstanceNotFound(_) | Error::FunctionNotFound(_) => Code::NotFound,
        Error::FunctionExists(_) => Code::AlreadyExists,
        Error::ImageInUse { .. } | Error::FunctionDeployed(_) => Code::FailedPrecondition,
        Error::NotListening(_) => Code::DeadlineExceeded,
        Error::Exhausted(_) => Code::ResourceExhausted,
        Error::ExitedAtStart { .. } => Code::FailedPrecondition,
        Error::Containerd(c) => containerd_code(c),
        Error::Network(n) => match n {
            NetworkError::Netns { .. } | NetworkError::Plugin { .. } => Code::Internal,
            NetworkError::PluginMissing { .. } => Code::FailedPrecondition,
        },
        Error::Runtime(r) => match r {
            RuntimeError::Spec(_) => Code::FailedPrecondition,
            RuntimeError::Containerd(c) => containerd_code(c),
            RuntimeError::Encode { .. } | RuntimeError::Chown { .. } => Code::Internal,
            RuntimeError::Scratch(_) | RuntimeError::SettleCpu { .. } => Code::Internal,
        },
        Error::Image(i) => image_code(i),
        Error::Logs(_) | Error::Io { .. } => Code::Internal,
    };
    Status::new(code, crate::error::chain(&e))
}

fn image_code(e: &ImageError) -> Code {
    match e {
        ImageError::BadReference(_) => Code::InvalidArgument,
        ImageError::Registry(r) => registry_code(r),
        ImageError::Content(c) => match c {
            ContentError::Containerd(c) => containerd_code(c),
            ContentError::Registry(r) => registry_code(r),
            ContentError::Mismatch { .. } => Code::DataLoss,
        },
        ImageError::Unpack(u) => match u {
            UnpackError::Containerd(c) => containerd_code(c),
            UnpackError::DiffIdMismatch { .. } => Code::DataLoss,
            // The bytes matched their digest, so the image itself is bad.
            UnpackError::Extract {
                source:
                    ExtractError::Read(_)
                    | ExtractError::Outside(_)
                    | ExtractError::Owner { .. }
                    | ExtractError::Kind { .. }
                    | ExtractError::Xattr { .. }
                    | ExtractError::Budget { .. },
                ..
            } => Code::FailedPrecondition,
            UnpackError::Extract { source: ExtractError::MediaType(_), .. } => Code::FailedPrecondition,
            UnpackError::Extract { source: ExtractError::Entry { .. }, .. } => Code::Internal,
            UnpackError::NotOverlay { .. } => Code::FailedPrecondition,
            UnpackError::Move { .. } => Code::Internal,
        },
        ImageError::Containerd(c) => containerd_code(c),
        ImageError::Malformed { .. } => Code::FailedPrecondition,
        ImageError::Architecture { .. } => Code::FailedPrecondition,
        ImageError::TooLarge { .. } => Code::FailedPrecondition,
        ImageError::Fetch { .. } => Code::Internal,
        ImageError::NotPulled { .. } => Code::NotFound,
    }
}

fn registry_code(e: &RegistryError) -> Code {
    match e {
        RegistryError::Unreachable { .. } | RegistryError::Read { .. } => Code::Unavailable,
        RegistryError::NotFound { .. } => Code::NotFound,
        RegistryError::Unauthorized { .. } => Code::PermissionDenied,
        RegistryError::Status { .. } => Code::Unknown,
        RegistryError::File { .. } => Code::Internal,
        RegistryError::NotAllowed(_) | RegistryError::Redirect { .. } => Code::PermissionDenied,
        RegistryError::TooLarge { .. } | RegistryError::Digest { .. } => Code::FailedPrecondition,
    }
}

fn containerd_code(e: &ContainerdError) -> Code {
    match e.code() {
        // containerd's own NOT_FOUND on an inner object is the agent's fault, not the caller's.
        Code::NotFound => Code::Internal,
        Code::Unavailable => Code::Unavailable,
        _ => Code::Internal,
    }
}

/// The call an InvokeRequest asks for, checked.
fn invocation(r: pb::InvokeRequest) -> Result<crate::dataplane::Invocation, Status> {
    use hyper::header::{HeaderName, HeaderValue};
    let trigger = match r.trigger_source.as_str() {
        "" => None,
        t if t.len() <= 32 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') => {
            HeaderValue::from_str(t).ok()
        }
        t => {
            return Err(Status::invalid_argument(format!(
                "trigger_source {t:?} must be 1 to 32 of A-Z, a-z, 0-9, '_' and '-'"
            )))
        }
    };
    let method = match r.method.as_str() {
        "" => hyper::Method::POST,
        m => hyper::Method::from_bytes(m.as_bytes())
            .map_err(|_| Status::invalid_argument(format!("method {m:?} is not an HTTP method")))?,
    };
    let path = if r.path.is_empty() { "/" } else { r.path.as_str() };
    let target = match path.parse::<hyper::Uri>() {
        Ok(u) if path.starts_with('/') && u.authority().is_none() => u,
        _ => {
            return Err(Status::invalid_argument(format!(
                "path {path:?} must be a path (and query) starting with '/'"
            )))
        }
    };
    let mut headers = hyper::HeaderMap::new();
    for (k, v) in &r.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| Status::invalid_argument(format!("header name {k:?} is not valid")))?;
        let value = HeaderValue::from_str(v)
            .map_err(|_| Status::invalid_argument(format!("the value of header {k} is not valid")))?;
        headers.insert(name, value);
    }
    Ok(crate::dataplane::Invocation { method, target, headers, payload: r.payload.into(), trigger })
}

//! The scheduler's seam to agents: what it asks of one agent, as a trait, so placement
//! and reconcile run against fakes in unit tests and against agents' gRPC API for real.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use fnrt_proto::agent::v1 as apb;
use tonic::Status;

use fnrt_proto::agent::v1::agent_client::AgentClient;
use fnrt_proto::connect::Bearer;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A client of an agent's gRPC API.
pub type Client = AgentClient<InterceptedService<Channel, Bearer>>;

/// A call to an agent.
pub type Call<'a, T> = Pin<Box<dyn Future<Output = Result<T, Status>> + Send + 'a>>;

/// An agent's log lines, as it sends them.
pub type LogStream = Pin<Box<dyn futures_util::Stream<Item = Result<apb::LogLine, Status>> + Send>>;

/// How long an agent gets for a deploy (pull and health checks included).
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long an agent gets for a removal.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a trigger's call may take.
const INVOKE_TIMEOUT: Duration = Duration::from_secs(900);

/// What the scheduler asks of one agent.
pub trait AgentLink: Send + Sync {
    /// Deploys a function new to the agent (`AlreadyExists` when it has it); its warnings
    /// (memory below what the image's size calls for).
    fn deploy(&self, spec: apb::FunctionSpec) -> Call<'_, Vec<String>>;
    /// Updates a function the agent has (`NotFound` when it has not); its warnings.
    fn update(&self, spec: apb::FunctionSpec) -> Call<'_, Vec<String>>;
    /// Removes a function (`NotFound` when it has not).
    fn remove(&self, name: &str) -> Call<'_, ()>;
    /// Pulls an image into the agent's cache, to the end.
    fn prefetch(&self, image: &str, credentials: Option<apb::RegistryCredentials>) -> Call<'_, ()>;
    /// Calls a function with an event; its answer.
    fn invoke(&self, req: apb::InvokeRequest) -> Call<'_, apb::InvokeResponse>;
    /// Its instances' log lines (StreamLogs).
    fn logs(&self, req: apb::StreamLogsRequest) -> Call<'_, LogStream>;
}

/// An agent's gRPC API.
pub struct Grpc(pub Client);

fn timed<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    req.set_timeout(timeout);
    req
}

impl AgentLink for Grpc {
    fn deploy(&self, spec: apb::FunctionSpec) -> Call<'_, Vec<String>> {
        let req = timed(apb::DeployFunctionRequest { function: Some(spec) }, DEPLOY_TIMEOUT);
        Box::pin(async move { self.0.clone().deploy_function(req).await.map(|r| r.into_inner().warnings) })
    }

    fn update(&self, spec: apb::FunctionSpec) -> Call<'_, Vec<String>> {
        let req = timed(apb::UpdateFunctionRequest { function: Some(spec) }, DEPLOY_TIMEOUT);
        Box::pin(async move { self.0.clone().update_function(req).await.map(|r| r.into_inner().warnings) })
    }

    fn remove(&self, name: &str) -> Call<'_, ()> {
        let req = timed(apb::RemoveFunctionRequest { name: name.to_string() }, CALL_TIMEOUT);
        Box::pin(async move { self.0.clone().remove_function(req).await.map(drop) })
    }

    fn prefetch(&self, image: &str, credentials: Option<apb::RegistryCredentials>) -> Call<'_, ()> {
        let req = apb::PrefetchImageRequest {
            reference: image.to_string(),
            pin: false,
            registry_credentials: credentials,
        };
        let req = timed(req, DEPLOY_TIMEOUT);
        Box::pin(async move {
            let mut stream = self.0.clone().prefetch_image(req).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        })
    }

    fn invoke(&self, req: apb::InvokeRequest) -> Call<'_, apb::InvokeResponse> {
        let req = timed(req, INVOKE_TIMEOUT);
        Box::pin(async move { Ok(self.0.clone().invoke(req).await?.into_inner()) })
    }

    fn logs(&self, req: apb::StreamLogsRequest) -> Call<'_, LogStream> {
        // Followed lines come for as long as the caller reads them: no deadline then.
        let req = if req.follow { tonic::Request::new(req) } else { timed(req, CALL_TIMEOUT) };
        Box::pin(
            async move { Ok(Box::pin(self.0.clone().stream_logs(req).await?.into_inner()) as LogStream) },
        )
    }
}

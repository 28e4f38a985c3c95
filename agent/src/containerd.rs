//! The one small client type through which the agent talks to containerd.
//!
//! It holds the gRPC channel and the agent's containerd namespace, and adds the namespace
//! (and, during a pull, the lease) to every request, so no caller can forget it.

use std::path::{Path, PathBuf};

use containerd_client::services::v1::{
    containers_client::ContainersClient, content_client::ContentClient, events_client::EventsClient,
    images_client::ImagesClient, leases_client::LeasesClient, namespaces_client::NamespacesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient, version_client::VersionClient,
};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// A failed containerd call or connection.
#[derive(Debug, thiserror::Error)]
pub enum ContainerdError {
    /// The socket could not be connected to.
    #[error("cannot connect to containerd at {socket}: {source}; is containerd running there?")]
    Connect {
        /// The socket path that was tried.
        socket: PathBuf,
        /// Why it failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// containerd answered a call with an error (or could not be reached for it).
    #[error("containerd {op}: {}", .status.message())]
    Call {
        /// The call that failed, e.g. "create container fn-1234".
        op: String,
        /// containerd's answer.
        status: Status,
    },
}

impl ContainerdError {
    /// The gRPC code containerd answered with (UNAVAILABLE when it could not be reached).
    pub fn code(&self) -> Code {
        match self {
            ContainerdError::Connect { .. } => Code::Unavailable,
            ContainerdError::Call { status, .. } => status.code(),
        }
    }

    /// True when containerd said the object exists already.
    pub fn is_already_exists(&self) -> bool {
        self.code() == Code::AlreadyExists
    }
}

/// Wraps a failed call's status with a description of the call.
pub fn call_err(op: impl Into<String>) -> impl FnOnce(Status) -> ContainerdError {
    let op = op.into();
    move |status| ContainerdError::Call { op, status }
}

/// A connection to containerd bound to one namespace.
#[derive(Clone, Debug)]
pub struct Containerd {
    channel: Channel,
    namespace: String,
    socket: PathBuf,
}

impl Containerd {
    /// Connects to containerd's socket and checks that it answers.
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Self, ContainerdError> {
        let channel = containerd_client::connect(socket)
            .await
            .map_err(|source| ContainerdError::Connect { socket: socket.to_path_buf(), source })?;
        let cd = Containerd { channel, namespace: namespace.to_string(), socket: socket.to_path_buf() };
        cd.version().await?;
        Ok(cd)
    }

    /// The namespace this client works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String, ContainerdError> {
        let v = VersionClient::new(self.channel.clone())
            .version(())
            .await
            .map_err(call_err(format!("version (socket {})", self.socket.display())))?;
        Ok(v.into_inner().version)
    }

    /// A request in the agent's namespace.
    pub fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Ok(ns) = MetadataValue::try_from(self.namespace.as_str()) {
            req.metadata_mut().insert("containerd-namespace", ns);
        }
        req
    }

    /// A request in the agent's namespace that also holds `lease`, so that what it makes
    /// is kept from containerd's garbage collector until the lease is deleted.
    pub fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut req = self.req(msg);
        if let Ok(l) = MetadataValue::try_from(lease) {
            req.metadata_mut().insert("containerd-lease", l);
        }
        req
    }

    /// Containers service.
    pub fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    /// Content service.
    pub fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }
    /// Events service.
    pub fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    /// Images service.
    pub fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    /// Leases service.
    pub fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    /// Namespaces service.
    pub fn namespaces(&self) -> NamespacesClient<Channel> {
        NamespacesClient::new(self.channel.clone())
    }
    /// Snapshots service.
    pub fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    /// Tasks service.
    pub fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
}

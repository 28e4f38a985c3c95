//! Keep-alive HTTP/1 connections from the data plane to instances.
//!
//! Each data plane thread owns one `Upstream`: an idle list of connections per instance
//! address, so taking and giving back a connection is an uncontended lock and a vector
//! pop. The list names its instance: an address that a new instance got (CNI reuses
//! them) never gets the connections to the one before. A connection goes back to its list when the answer's body is dropped (see
//! [`Checkout`]); one that hyper closed meanwhile (the instance closed it, or the caller
//! dropped the body mid-way) is skipped when next taken. A request that an idle connection
//! could not send (closed under it before the request was written) is sent once more on a
//! new connection. Answers come back without hop-by-hop headers (see [`fnrt_hop`]).
//!
//! An instance in a network namespace of its own is connected to on that namespace's
//! loopback (its port on 127.0.0.1), not across the bridge: the socket is made on a short
//! thread that joined the namespace, and a socket stays in the namespace it was made in.
//! Loopback skips the veth pair, the bridge and the node's firewall on every packet of a
//! call. The instance still answers its health check on its bridge address, so a server
//! that listens on 0.0.0.0 (as a function must) is what is checked.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;

/// Any error of a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Bodies of answers and of forwarded requests.
pub type Body = BoxBody<Bytes, BoxError>;

/// Idle connections kept per instance address.
const MAX_IDLE: usize = 256;
/// How long connecting to an instance may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request did not reach an instance or got no answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        /// The instance's address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The connection took longer than [`CONNECT_TIMEOUT`].
    #[error("cannot connect to {0}: no answer within 5 s")]
    ConnectTimeout(SocketAddr),
    /// HTTP failed (handshake, request or answer).
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// Where an instance listens.
#[derive(Clone, Copy, Debug)]
pub struct Address<'a> {
    /// Its address on the bridge (and its port).
    pub at: SocketAddr,
    /// Its network namespace, if it has one of its own: then its port on the namespace's
    /// loopback is connected to.
    pub netns: Option<&'a Path>,
}

/// One thread's connections to the instances.
#[derive(Default)]
pub struct Upstream {
    idle: Mutex<HashMap<SocketAddr, Idle>>,
}

/// The idle connections to one instance.
struct Idle {
    instance: Arc<str>,
    senders: Vec<SendRequest<Body>>,
}

/// A connection lent to one call: given back to its idle list when dropped.
pub struct Checkout {
    sender: Option<SendRequest<Body>>,
    instance: Arc<str>,
    address: SocketAddr,
    upstream: Arc<Upstream>,
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(s) = self.sender.take() {
            if !s.is_closed() {
                self.upstream.give_back(&self.instance, self.address, s);
            }
        }
    }
}

impl Upstream {
    /// Sends `req` to `instance` at `address` on an idle connection or a new one. The
    /// answer's body should keep the [`Checkout`] until it is dropped.
    pub async fn send(
        self: &Arc<Self>,
        instance: &Arc<str>,
        to: Address<'_>,
        req: Request<Body>,
    ) -> Result<(Response<Incoming>, Checkout), UpstreamError> {
        let address = to.at;
        let mut req = req;
        if let Some(mut sender) = self.take_ready(instance, address).await {
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok((answer(resp), self.checkout(instance, address, sender))),
                Err(mut e) => match e.take_message() {
                    // Not written: the connection was closed under it; try a new one.
                    Some(r) => req = r,
                    None => return Err(e.into_error().into()),
                },
            }
        }
        let mut sender = connect(to).await?;
        let resp = sender.send_request(req).await?;
        Ok((answer(resp), self.checkout(instance, address, sender)))
    }

    fn checkout(
        self: &Arc<Self>,
        instance: &Arc<str>,
        address: SocketAddr,
        sender: SendRequest<Body>,
    ) -> Checkout {
        Checkout { sender: Some(sender), instance: instance.clone(), address, upstream: self.clone() }
    }

    /// An idle connection to `instance` that can take a request now, if one is open.
    async fn take_ready(&self, instance: &Arc<str>, address: SocketAddr) -> Option<SendRequest<Body>> {
        loop {
            let mut sender = {
                let mut idle = self.lock();
                let list = idle.get_mut(&address)?;
                if *list.instance != **instance {
                    idle.remove(&address);
                    return None;
                }
                list.senders.pop()?
            };
            if sender.is_closed() {
                continue;
            }
            // Given back when its answer's body ended: hyper may not have polled it
            // back to idle yet, or is closing it (body dropped mid-way).
            if sender.is_ready() || sender.ready().await.is_ok() {
                return Some(sender);
            }
        }
    }

    fn give_back(&self, instance: &Arc<str>, address: SocketAddr, sender: SendRequest<Body>) {
        let mut idle = self.lock();
        let list =
            idle.entry(address).or_insert_with(|| Idle { instance: instance.clone(), senders: Vec::new() });
        // A connection to an instance whose address another one took since is useless.
        if *list.instance == **instance && list.senders.len() < MAX_IDLE {
            list.senders.push(sender);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Idle>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A new HTTP/1 connection to an instance, on its namespace's loopback when it has one.
async fn connect(to: Address<'_>) -> Result<SendRequest<Body>, UpstreamError> {
    let address = to.at;
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, open(to)).await {
        Err(_) => return Err(UpstreamError::ConnectTimeout(address)),
        Ok(Err(source)) => return Err(UpstreamError::Connect { address, source }),
        Ok(Ok(s)) => s,
    };
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, %address, "instance connection");
        }
    });
    Ok(sender)
}

async fn open(to: Address<'_>) -> std::io::Result<TcpStream> {
    let Some(netns) = to.netns else { return TcpStream::connect(to.at).await };
    let socket = socket_in(netns).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("making a socket in its network namespace {}: {e}", netns.display()),
        )
    })?;
    socket.connect(SocketAddr::from((Ipv4Addr::LOCALHOST, to.at.port()))).await
}

/// A TCP socket made in the network namespace at `netns`. `setns` changes only the calling
/// thread, so it runs on a thread of its own that ends right after: no thread of the
/// agent's is ever left in an instance's namespace.
async fn socket_in(netns: &Path) -> std::io::Result<tokio::net::TcpSocket> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let ns = std::fs::File::open(netns)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("fnrt-netns-socket".into()).spawn(move || {
        let made = (|| {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            socket(AddressFamily::Inet, SockType::Stream, flags, None)
        })();
        let _ = tx.send(made.map_err(std::io::Error::from));
    })?;
    let fd = rx.await.map_err(|_| std::io::Error::other("the namespace's socket thread ended"))??;
    Ok(tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd)))
}

/// An instance's answer without its connection's headers: hyper ends a connection the
/// instance said `Connection: close` on; the caller's connection stays as it is.
fn answer(mut resp: Response<Incoming>) -> Response<Incoming> {
    fnrt_hop::strip(resp.headers_mut());
    resp
}

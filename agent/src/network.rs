//! One network namespace per instance, attached to the node's function bridge by the CNI
//! bridge plugin with host-local IPAM (Debian's containernetworking-plugins).
//!
//! The namespace is a bind mount under /run/netns (where `ip netns` also looks), so it
//! outlives the agent and is found again; every teardown path calls CNI DEL so that the
//! host-local address is released.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use tokio::io::AsyncWriteExt;

/// Where the namespaces' bind mounts live.
pub const NETNS_DIR: &str = "/run/netns";

/// The CNI plugins the agent runs from `cni_bin_dir`: `loopback` and `bridge` itself, and
/// `host-local`, which `bridge` runs for addresses (`check-config` looks for each).
pub const PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];

/// The CNI network's name (host-local keeps its addresses under `<data dir>/<name>`).
const NETWORK_NAME: &str = "fnrt";

/// A failure to set up or tear down an instance's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The namespace could not be made or removed.
    #[error("network namespace {path}: {what}: {source}")]
    Netns {
        /// Its path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A CNI plugin could not be run.
    #[error(
        "CNI plugin {plugin} could not be run: {source}; is containernetworking-plugins installed there?"
    )]
    PluginMissing {
        /// The plugin's path.
        plugin: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A CNI plugin failed.
    #[error("CNI {command} with {plugin} for {container} failed: {message}")]
    Plugin {
        /// ADD or DEL.
        command: &'static str,
        /// The plugin.
        plugin: String,
        /// The instance.
        container: String,
        /// What the plugin said.
        message: String,
    },
}

/// The node's function network: the bridge, its subnet and where the plugins are.
#[derive(Clone, Debug)]
pub struct Network {
    bin_dir: PathBuf,
    data_dir: PathBuf,
    bridge: String,
    subnet: String,
    netns_dir: PathBuf,
    scope: String,
}

/// An instance's network: its namespace and its address on the bridge.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// Path of the network namespace.
    pub netns: PathBuf,
    /// The instance's address.
    pub ip: IpAddr,
}

impl Network {
    /// The network of a node's agent; `scope` (the agent's containerd namespace) prefixes
    /// the names of its network namespaces and CNI container ids.
    pub fn new(bin_dir: &Path, data_dir: &Path, bridge: &str, subnet: &str, scope: &str) -> Network {
        Network {
            bin_dir: bin_dir.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            bridge: bridge.to_string(),
            subnet: subnet.to_string(),
            netns_dir: PathBuf::from(NETNS_DIR),
            scope: scope.to_string(),
        }
    }

    /// The namespace path of instance `id`.
    pub fn netns_path(&self, id: &str) -> PathBuf {
        self.netns_dir.join(self.cni_id(id))
    }

    /// The name of instance `id` in the node's shared places (netns, CNI allocations).
    pub fn cni_id(&self, id: &str) -> String {
        format!("{}-{id}", self.scope)
    }

    /// Makes the namespace of instance `id` and attaches it to the bridge. On failure,
    /// nothing of it stays.
    pub async fn attach(&self, id: &str) -> Result<Attachment, NetworkError> {
        let netns = self.netns_path(id);
        let path = netns.clone();
        tokio::task::spawn_blocking(move || create_netns(&path)).await.map_err(|e| {
            NetworkError::Netns { path: netns.clone(), what: "create", source: std::io::Error::other(e) }
        })??;
        match self.add(id, &netns).await {
            Ok(ip) => Ok(Attachment { netns, ip }),
            Err(e) => {
                let _ = self.detach(id).await;
                Err(e)
            }
        }
    }

    async fn add(&self, id: &str, netns: &Path) -> Result<IpAddr, NetworkError> {
        self.exec("ADD", "loopback", id, netns, "lo", &self.loopback_conf()).await?;
        let out = self.exec("ADD", "bridge", id, netns, "eth0", &self.bridge_conf()).await?;
        self.isolate_ports()?;
        let ip = parse_ip(&out).ok_or_else(|| NetworkError::Plugin {
            command: "ADD",
            plugin: "bridge".into(),
            container: id.into(),
            message: format!("no IP address in its result: {}", String::from_utf8_lossy(&out)),
        })?;
        // A reused address: the node must not keep sending to the last holder's MAC.
        if let IpAddr::V4(v4) = ip {
            if let Err(e) = crate::neighbor::forget(&self.bridge, v4) {
                tracing::warn!(address = %v4, error = %e, "could not forget the address's old neighbor entry");
            }
        }
        Ok(ip)
    }

    /// Releases the address of instance `id` and removes its namespace. Safe to call for
    /// what is half made or gone already.
    pub async fn detach(&self, id: &str) -> Result<(), NetworkError> {
        let netns = self.netns_path(id);
        let exists = netns.exists();
        // DEL must run even without the namespace: it is what frees the address.
        let ns_arg = if exists { netns.clone() } else { PathBuf::new() };
        let del = self.exec("DEL", "bridge", id, &ns_arg, "eth0", &self.bridge_conf()).await;
        if exists {
            let path = netns.clone();
            tokio::task::spawn_blocking(move || remove_netns(&path)).await.map_err(|e| {
                NetworkError::Netns { path: netns.clone(), what: "remove", source: std::io::Error::other(e) }
            })??;
        }
        del.map(|_| ())
    }

    /// Isolates every port of the bridge (the kernel then forwards nothing between two
    /// isolated ports), so instances do not reach each other even at layer 2. Run after
    /// each attach and at the agent's start (ports of adopted instances included); a
    /// bridge that does not exist yet has no ports.
    pub fn isolate_ports(&self) -> Result<(), NetworkError> {
        let dir = Path::new("/sys/class/net").join(&self.bridge).join("brif");
        let Ok(ports) = std::fs::read_dir(&dir) else { return Ok(()) };
        for port in ports.flatten() {
            let flag = port.path().join("isolated");
            let isolated = std::fs::read_to_string(&flag).map(|v| v.trim() == "1").unwrap_or(false);
            if !isolated {
                std::fs::write(&flag, "1").map_err(|source| NetworkError::Netns {
                    path: flag.clone(),
                    what: "isolate the bridge port",
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Ids of the instances that hold a host-local address in this agent's CNI data
    /// directory (owners with its scope as prefix), live or not: what a restarted agent
    /// checks against the instances it adopted. /run/netns is not scanned: it is shared by
    /// every agent on the node, and one scope can be the prefix of another's names.
    pub fn holders(&self) -> Vec<String> {
        let prefix = format!("{}-", self.scope);
        let mut ids: Vec<String> = Vec::new();
        let mut add = |name: &str| {
            if let Some(id) = name.strip_prefix(&prefix) {
                if !id.is_empty() && !ids.iter().any(|i| i == id) {
                    ids.push(id.to_string());
                }
            }
        };
        // host-local keeps one file per address, named by it, holding the owner's id.
        if let Ok(dir) = std::fs::read_dir(self.data_dir.join(NETWORK_NAME)) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().parse::<IpAddr>().is_err() {
                    continue;
                }
                let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
                add(owner.lines().next().unwrap_or("").trim());
            }
        }
        ids
    }

    fn bridge_conf(&self) -> String {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": NETWORK_NAME,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": self.subnet }]],
                // A default route through the bridge: where an instance may go beyond it
                // is the node's policy (crate::firewall), not a missing route.
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": self.data_dir,
            }
        })
        .to_string()
    }

    fn loopback_conf(&self) -> String {
        serde_json::json!({ "cniVersion": "1.0.0", "name": "fnrt-lo", "type": "loopback" }).to_string()
    }

    async fn exec(
        &self,
        command: &'static str,
        plugin: &str,
        id: &str,
        netns: &Path,
        ifname: &str,
        conf: &str,
    ) -> Result<Vec<u8>, NetworkError> {
        let path = self.bin_dir.join(plugin);
        tracing::debug!(command, plugin, instance = id, "cni");
        let mut child = tokio::process::Command::new(&path)
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.cni_id(id))
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.bin_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetworkError::PluginMissing { plugin: path.clone(), source })?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(conf.as_bytes()).await;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|source| NetworkError::PluginMissing { plugin: path.clone(), source })?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        // Plugins report errors as JSON on stdout: {"code":..,"msg":..,"details":..}.
        let message = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                let msg = v.get("msg")?.as_str()?.to_string();
                let details = v.get("details").and_then(|d| d.as_str()).unwrap_or("");
                Some(if details.is_empty() { msg } else { format!("{msg}: {details}") })
            })
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).trim().to_string());
        Err(NetworkError::Plugin { command, plugin: plugin.into(), container: id.into(), message })
    }
}

fn parse_ip(result: &[u8]) -> Option<IpAddr> {
    let v: serde_json::Value = serde_json::from_slice(result).ok()?;
    let addr = v.get("ips")?.get(0)?.get("address")?.as_str()?;
    addr.split('/').next()?.parse().ok()
}

/// Makes a new network namespace and pins it with a bind mount at `path`.
///
/// `unshare(CLONE_NEWNET)` changes only the calling thread, so it runs on a thread of its
/// own that ends right after; no pooled thread is left in the new namespace.
fn create_netns(path: &Path) -> Result<(), NetworkError> {
    let err = |what, source| NetworkError::Netns { path: path.to_path_buf(), what, source };
    std::fs::create_dir_all(NETNS_DIR).map_err(|e| err("create /run/netns", e))?;
    std::fs::File::create(path).map_err(|e| err("create mount point", e))?;
    let target = path.to_path_buf();
    let joined = std::thread::spawn(move || -> std::io::Result<()> {
        unshare(CloneFlags::CLONE_NEWNET)?;
        let tid = nix::unistd::gettid();
        let source = format!("/proc/self/task/{tid}/ns/net");
        mount(Some(source.as_str()), &target, None::<&str>, MsFlags::MS_BIND, None::<&str>)?;
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("netns thread panicked")));
    if let Err(e) = joined {
        let _ = std::fs::remove_file(path);
        return Err(err("unshare and bind mount", e));
    }
    Ok(())
}

fn remove_netns(path: &Path) -> Result<(), NetworkError> {
    // Mounted more than once when /run/netns became a shared mount of itself (as
    // `ip netns` makes it) after this namespace was made: unmount until it is not one.
    for _ in 0..4 {
        match umount2(path, MntFlags::MNT_DETACH) {
            Ok(()) => continue,
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => break,
            Err(e) => {
                return Err(NetworkError::Netns {
                    path: path.to_path_buf(),
                    what: "unmount",
                    source: e.into(),
                })
            }
        }
    }
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(NetworkError::Netns { path: path.to_path_buf(), what: "remove", source: e }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_address_of_a_cni_result() {
        let out = br#"{"cniVersion":"1.0.0","ips":[{"interface":2,"address":"10.201.0.7/16","gateway":"10.201.0.1"}]}"#;
        assert_eq!(parse_ip(out), Some("10.201.0.7".parse().expect("ip")));
        assert_eq!(parse_ip(b"{}"), None);
    }
}

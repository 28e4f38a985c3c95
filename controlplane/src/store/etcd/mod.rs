//! The store on etcd (v3 API; Debian's etcd-server 3.4 and later): every record under
//! one key prefix (`etcd_prefix`, default `fnrt/`), a batch one etcd transaction, a list
//! read page by page at one revision (a consistent snapshot), changes followed with a
//! watch (`watch`), leadership held on a lease (`leader`).
//!
//! Every batch that writes a record also writes `~rev`, so "nothing changed since
//! revision r" is one comparison of `~rev`'s modification revision.

mod leader;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, GetOptions, TlsOptions, Txn, TxnOp};
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use super::{io, is_control, Applied, Cond, Feed, Fence, Op, Records, Rev, Store, StoreError};

/// The key every data write also writes.
const REV_KEY: &str = "~rev";
/// The key the leader holds on its lease.
const LEADER_KEY: &str = "~leader";

/// Records read per request.
const PAGE: i64 = 500;
/// The longest one etcd request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How to reach the cluster.
#[derive(Debug, Clone, Default)]
pub struct EtcdSettings {
    /// Client URLs (`http://host:2379`, or `https://` with TLS).
    pub endpoints: Vec<String>,
    /// The prefix every key goes under.
    pub prefix: String,
    /// A user (etcd's authentication), with its password.
    pub username: String,
    /// Its password.
    pub password: fnrt_common::secret::Secret,
    /// PEM CA the cluster's certificates are checked against (TLS).
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM), when the cluster asks for one.
    pub cert_file: Option<PathBuf>,
    /// The key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

/// The store: a client and the prefix.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    leader: leader::Leadership,
}

fn read(path: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()))
}

impl EtcdSettings {
    fn options(&self) -> Result<ConnectOptions, String> {
        let mut o = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_require_leader(true);
        if !self.username.is_empty() {
            o = o.with_user(self.username.clone(), self.password.expose().to_string());
        }
        if let Some(ca) = &self.ca_file {
            let mut tls = TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read(ca, "etcd_ca_file")?));
            match (&self.cert_file, &self.key_file) {
                (Some(c), Some(k)) => {
                    let identity = etcd_client::Identity::from_pem(
                        read(c, "etcd_cert_file")?,
                        read(k, "etcd_key_file")?,
                    );
                    tls = tls.identity(identity);
                }
                (None, None) => {}
                _ => return Err("etcd_cert_file and etcd_key_file go together".into()),
            }
            o = o.with_tls(tls);
        }
        Ok(o)
    }
}

impl EtcdStore {
    /// Connects, and checks the cluster answers (a read of the prefix).
    pub async fn connect(settings: &EtcdSettings) -> Result<EtcdStore, StoreError> {
        let endpoints = settings.endpoints.join(",");
        let fail = |message: String| StoreError::Connect { endpoints: endpoints.clone(), message };
        let options = settings.options().map_err(&fail)?;
        let connect = Client::connect(settings.endpoints.clone(), Some(options));
        let client = tokio::time::timeout(REQUEST_TIMEOUT, connect)
            .await
            .map_err(|_| fail(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))?
            .map_err(|e| fail(e.to_string()))?;
        let leader = leader::Leadership::new(client.clone(), format!("{}{LEADER_KEY}", settings.prefix));
        let store = EtcdStore { client, prefix: settings.prefix.clone(), leader };
        // One small read proves the cluster answers (the records are read once, by the state).
        store.get(REV_KEY).await.map_err(|e| fail(e.to_string()))?;
        Ok(store)
    }

    /// Every record under `prefix` and the revision the pages were read at.
    async fn list_all(&self, prefix: &str) -> Result<(Records, Rev), StoreError> {
        let mut kv = self.client.kv_client();
        let start = format!("{}{prefix}", self.prefix);
        let range_end = prefix_end(start.as_bytes());
        let mut from = start.into_bytes();
        let mut revision = 0;
        let mut out = Vec::new();
        loop {
            let mut options = GetOptions::new().with_range(range_end.clone()).with_limit(PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let page = tokio::time::timeout(REQUEST_TIMEOUT, kv.get(from.clone(), Some(options)))
                .await
                .map_err(|_| io("etcd range")(&"no answer within 10 s"))?
                .map_err(|e| io("etcd range")(&e))?;
            if revision == 0 {
                revision = page.header().map_or(0, |h| h.revision());
            }
            for kv in page.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                let Some(key) = key.strip_prefix(&self.prefix) else { continue };
                out.push((key.to_string(), kv.value().to_vec()));
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok((out, revision)),
            }
        }
    }

    fn compare(&self, cond: Cond) -> Compare {
        let p = &self.prefix;
        match cond {
            Cond::Unchanged(rev) => Compare::mod_revision(format!("{p}{REV_KEY}"), CompareOp::Less, rev + 1),
            Cond::Value(k, Some(v)) => Compare::value(format!("{p}{k}"), CompareOp::Equal, v),
            Cond::Value(k, None) => Compare::version(format!("{p}{k}"), CompareOp::Equal, 0),
            Cond::Leader(f) => Compare::create_revision(format!("{p}{LEADER_KEY}"), CompareOp::Equal, f.rev),
        }
    }

    async fn apply_all(&self, conds: Vec<Cond>, ops: Vec<Op>) -> Result<Applied, StoreError> {
        // etcd refuses a transaction that names one key twice: the last op of a key wins.
        let mut last: BTreeMap<String, Op> = BTreeMap::new();
        for op in ops {
            let key = match &op {
                Op::Put(k, _) | Op::Delete(k) => k.clone(),
            };
            last.insert(key, op);
        }
        if last.keys().any(|k| !is_control(k)) {
            last.insert(REV_KEY.to_string(), Op::Put(REV_KEY.to_string(), vec![]));
        }
        let txn_ops: Vec<TxnOp> = last
            .into_values()
            .map(|op| match op {
                Op::Put(k, v) => TxnOp::put(format!("{}{k}", self.prefix), v, None),
                Op::Delete(k) => TxnOp::delete(format!("{}{k}", self.prefix), None),
            })
            .collect();
        let mut kv = self.client.kv_client();
        let mut txn = Txn::new();
        if !conds.is_empty() {
            txn = txn.when(conds.into_iter().map(|c| self.compare(c)).collect::<Vec<_>>());
        }
        // On a conflict, the revision of the last data write: what to catch up with.
        let txn = txn.and_then(txn_ops).or_else(vec![TxnOp::get(format!("{}{REV_KEY}", self.prefix), None)]);
        let r = tokio::time::timeout(REQUEST_TIMEOUT, kv.txn(txn))
            .await
            .map_err(|_| io("etcd txn")(&"no answer within 10 s"))?
            .map_err(|e| io("etcd txn")(&e))?;
        let rev = r.header().map_or(0, |h| h.revision());
        if r.succeeded() {
            return Ok(Applied::Done(rev));
        }
        let data_rev = r.op_responses().iter().find_map(|o| match o {
            etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
            _ => None,
        });
        Ok(Applied::Conflict(data_rev.unwrap_or(rev)))
    }
}

/// The smallest key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Store for EtcdStore {
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Records, StoreError>> {
        Box::pin(async move { Ok(self.list_all(prefix).await?.0) })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<(Records, Rev), StoreError>> {
        Box::pin(async move {
            let (mut all, rev) = self.list_all("").await?;
            all.retain(|(k, _)| !is_control(k));
            Ok((all, rev))
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            let mut kv = self.client.kv_client();
            let r = tokio::time::timeout(REQUEST_TIMEOUT, kv.get(format!("{}{key}", self.prefix), None))
                .await
                .map_err(|_| io("etcd get")(&"no answer within 10 s"))?
                .map_err(|e| io("etcd get")(&e))?;
            Ok(r.kvs().first().map(|kv| kv.value().to_vec()))
        })
    }

    fn apply_if(&self, conds: Vec<Cond>, ops: Vec<Op>) -> BoxFuture<'_, Result<Applied, StoreError>> {
        Box::pin(self.apply_all(conds, ops))
    }

    fn watch(&self, after: Rev) -> BoxStream<'static, Result<Feed, StoreError>> {
        watch::feed(self.client.clone(), self.prefix.clone(), after)
    }

    fn lead(&self, me: &str) -> tokio::sync::watch::Receiver<Option<Fence>> {
        self.leader.campaign(me)
    }

    fn resign(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.leader.resign())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"fnrt/"), b"fnrt0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }
}

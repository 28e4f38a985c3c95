//! What the gateway needs to route a call, kept current on every write of the state (see
//! `State::write`): a function by custom domain, by `<namespace>/<function>` names, and
//! what of it decides the call — no secrets, no scans of every namespace per call.

use std::collections::HashMap;
use std::sync::Arc;

use std::collections::BTreeMap;

use crate::model::{Domain, Function, FunctionStatus, Namespace};

/// A function as the gateway sees it.
#[derive(Debug, Clone)]
pub struct Routed {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its namespace's id.
    pub namespace_id: String,
    /// Its name on the agents.
    pub agent_name: String,
    /// Calls need a token.
    pub private: bool,
    /// Whether a deploy put it on agents.
    pub deployed: bool,
    /// Whether it is an event function (deployed as one).
    pub event: bool,
    /// Where it stands.
    pub status: FunctionStatus,
    /// Why its last deploy failed.
    pub error_message: Option<String>,
    /// Its namespace's name (its key in the by-name index).
    pub namespace_name: String,
}

/// The index.
#[derive(Debug, Default)]
pub struct RouteIndex {
    functions: HashMap<String, Arc<Routed>>,
    /// (namespace name, function name) → function id.
    by_name: HashMap<(String, String), String>,
    /// Custom domain host name (lowercase) → function id.
    by_domain: HashMap<String, String>,
}

impl RouteIndex {
    /// The index of `d`.
    pub fn of(
        namespaces: &BTreeMap<String, Namespace>,
        functions: &BTreeMap<String, Function>,
        domains: &BTreeMap<String, Domain>,
    ) -> RouteIndex {
        let mut idx = RouteIndex::default();
        for f in functions.values() {
            idx.put(f, namespaces.get(&f.namespace_id));
        }
        idx.set_domains(domains);
        idx
    }

    /// Indexes function `f` of namespace `ns` (again, after a change); without its
    /// namespace it is not routed.
    pub fn put(&mut self, f: &Function, ns: Option<&Namespace>) {
        self.remove(&f.id);
        let Some(ns) = ns else { return };
        self.by_name.insert((ns.name.clone(), f.name.clone()), f.id.clone());
        let routed = Routed {
            id: f.id.clone(),
            name: f.name.clone(),
            namespace_id: f.namespace_id.clone(),
            agent_name: f.agent_name(),
            private: f.privacy == "private",
            deployed: f.deployed.is_some(),
            event: f.deployed.as_ref().is_some_and(|d| d.event),
            status: f.status,
            error_message: f.error_message.clone(),
            namespace_name: ns.name.clone(),
        };
        self.functions.insert(f.id.clone(), Arc::new(routed));
    }

    /// Forgets function `id`.
    pub fn remove(&mut self, id: &str) {
        if let Some(old) = self.functions.remove(id) {
            let key = (old.namespace_name.clone(), old.name.clone());
            if self.by_name.get(&key).is_some_and(|x| x == id) {
                self.by_name.remove(&key);
            }
        }
    }

    /// Indexes `domains` (all of them, instead of the last ones).
    pub fn set_domains(&mut self, domains: &BTreeMap<String, Domain>) {
        self.by_domain =
            domains.values().map(|x| (x.hostname.to_ascii_lowercase(), x.function_id.clone())).collect();
    }

    fn named(&self, ns: &str, f: &str) -> Option<Arc<Routed>> {
        let id = self.by_name.get(&(ns.to_string(), f.to_string()))?;
        self.functions.get(id).cloned()
    }

    /// The function a call to `host` (no port) with path and query `pq` is for, and the
    /// path to forward: a custom domain's whole host name, `<namespace>-<function>.<domain>`,
    /// or `/<namespace>/<function>/<rest>` on any other host.
    pub fn target(&self, host: &str, pq: &str, domain: &str) -> Option<(Arc<Routed>, String)> {
        if let Some(id) = self.by_domain.get(&host.to_ascii_lowercase()) {
            return self.functions.get(id).map(|f| (f.clone(), pq.to_string()));
        }
        if let Some(label) = host.strip_suffix(domain).and_then(|h| h.strip_suffix('.')) {
            // <namespace>-<function>: both may hold '-', so try every split.
            return label
                .match_indices('-')
                .find_map(|(i, _)| self.named(&label[..i], &label[i + 1..]))
                .map(|f| (f, pq.to_string()));
        }
        let (path, query) = pq.split_once('?').map_or((pq, None), |(p, q)| (p, Some(q)));
        let mut segments = path.trim_start_matches('/').splitn(3, '/');
        let (ns, f) = (segments.next()?, segments.next()?);
        let tail = format!(
            "/{}{}",
            segments.next().unwrap_or(""),
            query.map(|q| format!("?{q}")).unwrap_or_default()
        );
        self.named(ns, f).map(|f| (f, tail))
    }
}

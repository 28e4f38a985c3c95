//! Deploying, changing and removing a function's pool, and serving the saved ones again
//! after a restart.

use std::sync::Arc;

use super::{start_request, view, FunctionSpec, FunctionView, Owner, Pool, Pools, RawSpec, Slot, State};
use crate::error::Error;
use fnrt_function::policy::memory_advice;

impl Pools {
    /// Deploys a function: pulls its image and starts its provisioned instances. On any
    /// failure nothing of it is left.
    pub async fn deploy(self: &Arc<Self>, raw: RawSpec) -> Result<(FunctionView, Vec<String>), Error> {
        let spec = Arc::new(raw.check(&self.policy)?);
        self.ops.check_class(spec.sandbox_class)?;
        let state = State { deploying: true, ..State::default() };
        let pool = Arc::new(Pool::new(Owner::Deployed, self.served(spec.clone()), state));
        {
            let mut map = self.map();
            if map.contains_key(&spec.name) {
                return Err(Error::FunctionExists(spec.name.clone()));
            }
            map.insert(spec.name.clone(), pool.clone());
        }
        match self.prepare(&spec).await {
            Ok((slots, warnings)) => {
                if let Err(e) = self.store.save(&spec) {
                    tracing::warn!(function = %spec.name, error = %e, "saving the function: a restarted agent will not know it");
                }
                let mut st = pool.state();
                st.slots.extend(slots);
                st.deploying = false;
                drop(st);
                self.ops.keep_image(&spec.name, spec.keep_image.then_some(spec.image.as_str()));
                tracing::info!(function = %spec.name, provisioned = spec.provisioned, "function deployed");
                Ok((view(&pool), warnings))
            }
            Err(e) => {
                self.map().remove(&spec.name);
                Err(e)
            }
        }
    }

    /// Pulls a spec's image and starts its provisioned instances (all or none).
    async fn prepare(&self, spec: &FunctionSpec) -> Result<(Vec<Slot>, Vec<String>), Error> {
        let info = self.ops.pull_image(&spec.image, spec.pull_credentials.as_ref()).await?;
        let warnings: Vec<String> = memory_advice(info.size_bytes, spec.memory_mb).into_iter().collect();
        let slots = self.start_n(spec, spec.provisioned).await?;
        Ok((slots, warnings))
    }

    /// Starts `n` instances of `spec` at once; if one fails, the others are stopped.
    async fn start_n(&self, spec: &FunctionSpec, n: u32) -> Result<Vec<Slot>, Error> {
        let starts = (0..n).map(|_| self.ops.start(start_request(spec)));
        let results = futures_util::future::join_all(starts).await;
        let key = spec.instance_key();
        let mut slots = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok((inst, _)) => slots.push(Slot::of(inst, key)),
                Err(e) => failure = failure.or(Some(e)),
            }
        }
        if let Some(e) = failure {
            for s in slots {
                if let Err(stop) = self.ops.stop(&s.id, None).await {
                    tracing::warn!(instance = %s.id, error = %stop, "stopping after a failed start");
                }
            }
            return Err(e);
        }
        Ok(slots)
    }

    /// Changes a function. When what its instances are started with changes, instances of
    /// the new spec are started first (as many as are provisioned, at least one if it has
    /// instances); if they fail, the old spec stays and keeps serving.
    pub async fn update(self: &Arc<Self>, raw: RawSpec) -> Result<(FunctionView, Vec<String>), Error> {
        let spec = Arc::new(raw.check(&self.policy)?);
        self.ops.check_class(spec.sandbox_class)?;
        let pool = self.deployed(&spec.name).ok_or_else(|| Error::FunctionNotFound(spec.name.clone()))?;
        let old = pool.spec();
        // A new image is pulled; the same one is in the node cache: its registry is not
        // asked (an update of scales must not depend on it).
        let size = if old.image == spec.image {
            self.ops.cached_image_size(&spec.image).await
        } else {
            Some(self.ops.pull_image(&spec.image, spec.pull_credentials.as_ref()).await?.size_bytes)
        };
        let warnings: Vec<String> =
            size.and_then(|bytes| memory_advice(bytes, spec.memory_mb)).into_iter().collect();
        // Saved only once it serves: a restarted agent must not bring back a spec whose
        // instances failed to start while the old one kept serving.
        let save = |spec: &FunctionSpec| {
            if let Err(e) = self.store.save(spec) {
                tracing::warn!(function = %spec.name, error = %e, "saving the function: a restarted agent will not know this change");
            }
        };
        if old.instance_key() == spec.instance_key() {
            save(&spec);
            self.ops.keep_image(&spec.name, spec.keep_image.then_some(spec.image.as_str()));
            pool.set_served(self.served(spec));
            pool.changed.notify_waiters();
            return Ok((view(&pool), warnings));
        }
        let has_instances = pool.state().live() > 0;
        let target = if has_instances { spec.provisioned.max(1) } else { spec.provisioned };
        let slots = self.start_n(&spec, target).await?;
        save(&spec);
        self.ops.keep_image(&spec.name, spec.keep_image.then_some(spec.image.as_str()));
        {
            let mut st = pool.state();
            for s in st.slots.iter_mut() {
                s.retired = true;
            }
            st.slots.extend(slots);
            // The new spec's instances started: the old one's failures are not theirs.
            st.crash_loop = None;
            pool.set_served(self.served(spec.clone()));
        }
        pool.changed.notify_waiters();
        tracing::info!(function = %spec.name, version = %spec.version, "function updated; old instances retire");
        Ok((view(&pool), warnings))
    }

    /// Removes a function: its instances stop once their calls finish.
    pub fn remove(&self, name: &str) -> Result<(), Error> {
        let pool = self.map().remove(name).ok_or_else(|| Error::FunctionNotFound(name.to_string()))?;
        self.store.remove(name)?;
        self.ops.keep_image(name, None);
        {
            let mut st = pool.state();
            st.removed = true;
            for s in st.slots.iter_mut() {
                s.retired = true;
            }
        }
        pool.changed.notify_waiters();
        super::locked(&self.draining).push(pool);
        Ok(())
    }

    /// Serves the saved functions again (after a restart) with the running instances of
    /// each as its pool (the pools' care then starts what is missing), and the instances
    /// of no saved function as the pools of functions started on their own.
    pub fn restore(&self) {
        let mut running = self.ops.running();
        for spec in self.store.load() {
            let spec = Arc::new(spec);
            let key = spec.instance_key();
            let (mine, rest): (Vec<_>, Vec<_>) = running.into_iter().partition(|i| i.function == spec.name);
            running = rest;
            let slots: Vec<Slot> = mine.into_iter().map(|i| Slot::of(i, key)).collect();
            tracing::info!(function = %spec.name, instances = slots.len(), "serving a saved function again");
            let state = State { slots, ..State::default() };
            self.ops.keep_image(&spec.name, spec.keep_image.then_some(spec.image.as_str()));
            let pool = Arc::new(Pool::new(Owner::Deployed, self.served(spec.clone()), state));
            self.map().insert(spec.name.clone(), pool);
        }
        self.restore_started(running);
    }
}

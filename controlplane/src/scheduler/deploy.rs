//! A function's deploy: prefetch (with image acceleration), place, put on the agents,
//! then `ready`, or `error` with the reason and nothing left of the attempt.

use std::sync::Arc;

use chrono::Utc;
use futures_util::future::join_all;

use super::{lock, spec_of, ScheduleError, Scheduler};
use crate::model::{Deployed, FunctionStatus};
use crate::state::Change;

/// Marks a code function's image as being built, until dropped (a failed or panicking
/// build included).
pub(super) struct Building<'a> {
    scheduler: &'a Scheduler,
    id: String,
}

impl<'a> Building<'a> {
    pub(super) fn new(scheduler: &'a Scheduler, id: &str) -> Building<'a> {
        lock(&scheduler.building).insert(id.to_string());
        Building { scheduler, id: id.to_string() }
    }
}

impl Drop for Building<'_> {
    fn drop(&mut self) {
        lock(&self.scheduler.building).remove(&self.id);
    }
}

impl Scheduler {
    /// Whether function `id`'s image is being built (its status shows `creating`).
    pub fn is_building(&self, id: &str) -> bool {
        lock(&self.building).contains(id)
    }

    pub(super) async fn run_deploy(self: &Arc<Self>, id: &str) {
        let pushed = |me: &Self| me.state.read(|d| d.functions.get(id).and_then(|f| f.pushed_digest.clone()));
        let pushed_before = pushed(self);
        // On a task of its own: a panic in it fails the deploy with a reason instead of
        // leaving the function pending for ever.
        let me = self.clone();
        let owned = id.to_string();
        let outcome = match tokio::spawn(async move { me.deploy_function(&owned).await }).await {
            Ok(outcome) => outcome,
            Err(e) => Err(ScheduleError::Task(e.to_string())),
        };
        if let Err(e) = &outcome {
            tracing::warn!(function = id, error = %e, "deploy failed");
        }
        use crate::metrics::{DEPLOY_ERROR, DEPLOY_READY};
        self.metrics.deploy(if outcome.is_ok() { DEPLOY_READY } else { DEPLOY_ERROR });
        let written = self
            .state
            .write(|d| {
                let Some(mut f) = d.functions.get(id).cloned() else { return Ok((vec![], ())) };
                if f.status == FunctionStatus::Deleting {
                    return Ok((vec![], ()));
                }
                match &outcome {
                    Ok((deployed, warnings)) => {
                        f.status = FunctionStatus::Ready;
                        f.ready_at = Some(Utc::now());
                        f.deployed = Some(deployed.clone());
                        f.error_message = None;
                        // E.g. the memory advice for the image's size (SCF's table).
                        f.runtime_message = (!warnings.is_empty()).then(|| warnings.join("; "));
                    }
                    Err(e) => {
                        f.status = FunctionStatus::Error;
                        f.error_message = Some(e.to_string());
                    }
                }
                f.updated_at = Utc::now();
                Ok((vec![Change::Function(f)], ()))
            })
            .await;
        if let Err(e) = written {
            tracing::error!(function = id, error = %e, "cannot record the deploy's outcome");
        }
        // A push of its tag arrived during this deploy: deploy that digest now.
        if pushed(self) != pushed_before {
            match crate::functions::start_deploy(&self.state, id, |_| false).await {
                Ok(_) => self.deploy(id),
                Err(e) => tracing::warn!(function = id, error = %e, "cannot deploy the pushed image"),
            }
        }
    }

    async fn prefetch(&self, image: &str, credentials: Option<fnrt_proto::agent::v1::RegistryCredentials>) {
        let calls = self.live().into_iter().map(|a| {
            let credentials = credentials.clone();
            async move {
                if let Err(s) = a.link.prefetch(image, credentials).await {
                    tracing::warn!(node = %a.node, image, error = %s.message(), "prefetch failed");
                }
            }
        });
        join_all(calls).await;
    }

    /// The image pinned to its digest, resolved once here so that every agent runs the
    /// same one. A registry the control plane cannot reach or is not let into leaves the
    /// tag to the agents (they may hold credentials the control plane does not).
    async fn pin(&self, image: &str, ns: &crate::model::Namespace) -> Result<String, ScheduleError> {
        use crate::build::image::PushError;
        use fnrt_registry::RegistryError;
        let registry = match super::credentials_for(ns, image) {
            Some(c) => c.client(&self.registry),
            None => self.registry.clone(),
        };
        match crate::build::image::pin(&registry, image).await {
            Ok(pinned) => Ok(pinned),
            Err(PushError::Registry(
                e @ (RegistryError::Unreachable { .. } | RegistryError::Unauthorized { .. }),
            )) => {
                tracing::warn!(image, error = %e, "cannot pin the image to a digest: the agents resolve its tag");
                Ok(image.to_string())
            }
            Err(source) => Err(ScheduleError::Image { image: image.to_string(), source }),
        }
    }

    /// Deploys function `id`; what it put on agents, with their warnings (deduplicated).
    async fn deploy_function(&self, id: &str) -> Result<(Deployed, Vec<String>), ScheduleError> {
        let (f, ns) = self
            .state
            .read(|d| {
                let f = d.functions.get(id)?.clone();
                let ns = d.namespaces.get(&f.namespace_id)?.clone();
                Some((f, ns))
            })
            .ok_or_else(|| ScheduleError::Deleted(id.to_string()))?;
        let mut deployed = Deployed::of(&f, &ns);
        if f.registry_image.is_empty() {
            let built = {
                let _building = Building::new(self, id);
                crate::build::build(&self.cfg, &self.registry, &f, &ns).await
            };
            let message = match &built {
                Ok((_, m)) => m.clone(),
                Err(e) => format!("build failed: {e}"),
            };
            let _ = self
                .state
                .write(|d| {
                    let Some(mut g) = d.functions.get(id).cloned() else { return Ok((vec![], ())) };
                    g.build_message = Some(message.clone());
                    Ok((vec![Change::Function(g)], ()))
                })
                .await;
            deployed.image = built?.0;
        } else {
            deployed.image = self.pin(&deployed.image, &ns).await?;
        }
        let name = f.agent_name();
        // Right after a restart agents are still joining: give them one lost_after_ms.
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(u64::from(self.cfg.lost_after_ms));
        while self.live().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if f.image_acceleration {
            let credentials = super::credentials_for(&ns, &deployed.image).map(|c| c.for_agents().into());
            self.prefetch(&deployed.image, credentials).await;
        }
        let live = self.live();
        let shares = super::place(
            f.min_scale,
            f.max_scale,
            deployed.memory_mb,
            deployed.sandbox_class,
            &self.candidates(&live, &name, &deployed),
        )?;
        let calls = shares.iter().filter_map(|share| {
            let a = live.iter().find(|a| a.node == share.node)?;
            let was_there = self.hosts(a, &name);
            // At least one instance, so that the image is proven to start and answer its
            // health check; a share of 0 warm instances is scaled down by the next pass.
            let mut spec = spec_of(&f, &ns, &deployed, share);
            spec.provisioned = spec.provisioned.max(1);
            Some(async move { (a, was_there, self.apply(a, spec).await) })
        });
        let results = join_all(calls).await;
        let failures: Vec<(String, String)> = results
            .iter()
            .filter_map(|(a, _, r)| r.as_ref().err().map(|s| (a.node.clone(), s.message().to_string())))
            .collect();
        if failures.is_empty() {
            let mut warnings: Vec<String> =
                results.into_iter().filter_map(|(_, _, r)| r.ok()).flatten().collect();
            warnings.sort();
            warnings.dedup();
            return Ok((deployed, warnings));
        }
        // Nothing half made: where this deploy put the function first, it goes again.
        for (a, was_there, r) in &results {
            if r.is_ok() && !was_there {
                let _ = a.link.remove(&name).await;
                lock(&self.applied).remove(&(a.node.clone(), name.clone()));
            }
        }
        Err(ScheduleError::Agents(failures))
    }
}

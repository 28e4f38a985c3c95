//! A function's deploy: prefetch (with image acceleration), place, put on the agents,
//! then `ready`, or `error` with the reason and nothing left of the attempt.

use std::sync::Arc;

use chrono::Utc;
use fnrt_proto::agent::v1 as apb;
use futures_util::future::join_all;

use super::{lock, spec_of, Scheduler, CALL_TIMEOUT, DEPLOY_TIMEOUT};
use crate::model::{Deployed, FunctionStatus};
use crate::state::Change;

impl Scheduler {
    pub(super) async fn run_deploy(self: &Arc<Self>, id: &str) {
        let pushed = |me: &Self| me.state.read(|d| d.functions.get(id).and_then(|f| f.pushed_digest.clone()));
        let pushed_before = pushed(self);
        // On a task of its own: a panic in it fails the deploy with a reason instead of
        // leaving the function pending for ever.
        let me = self.clone();
        let owned = id.to_string();
        let outcome = match tokio::spawn(async move { me.deploy_function(&owned).await }).await {
            Ok(outcome) => outcome,
            Err(e) => {
                Err(format!("internal error: the deploy task failed ({e}); the control plane's log has more"))
            }
        };
        if let Err(e) = &outcome {
            tracing::warn!(function = id, error = %e, "deploy failed");
        }
        let written = self
            .state
            .write(|d| {
                let Some(mut f) = d.functions.get(id).cloned() else { return Ok((vec![], ())) };
                match outcome {
                    Ok(deployed) => {
                        f.status = FunctionStatus::Ready;
                        f.ready_at = Some(Utc::now());
                        f.deployed = Some(deployed);
                        f.error_message = None;
                    }
                    Err(e) => {
                        f.status = FunctionStatus::Error;
                        f.error_message = Some(e);
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

    async fn prefetch(&self, image: &str) {
        let calls = self.live().into_iter().map(|a| async move {
            let mut req =
                tonic::Request::new(apb::PrefetchImageRequest { reference: image.to_string(), pin: false });
            req.set_timeout(DEPLOY_TIMEOUT);
            let result = async {
                let mut stream = a.client.clone().prefetch_image(req).await?.into_inner();
                while stream.message().await?.is_some() {}
                Ok::<_, tonic::Status>(())
            }
            .await;
            if let Err(s) = result {
                tracing::warn!(node = %a.node, image, error = %s.message(), "prefetch failed");
            }
        });
        join_all(calls).await;
    }

    async fn deploy_function(&self, id: &str) -> Result<Deployed, String> {
        let (f, ns) = self
            .state
            .read(|d| {
                let f = d.functions.get(id)?.clone();
                let ns = d.namespaces.get(&f.namespace_id)?.clone();
                Some((f, ns))
            })
            .ok_or_else(|| format!("function {id} was deleted during its deploy"))?;
        let mut deployed = Deployed::of(&f, &ns);
        if f.registry_image.is_empty() {
            let built = crate::build::build(&self.cfg, &self.registry, &f, &ns).await;
            let message = match &built {
                Ok((_, m)) => m.clone(),
                Err(e) => format!("build failed: {e}"),
            };
            let _ = self
                .state
                .write(|d| {
                    let Some(mut g) = d.functions.get(id).cloned() else { return Ok((vec![], ())) };
                    g.build_message = Some(message);
                    Ok((vec![Change::Function(g)], ()))
                })
                .await;
            deployed.image = built.map_err(|e| format!("build failed: {e}"))?.0;
        }
        let name = f.agent_name();
        // Right after a restart agents are still joining: give them one lost_after_ms.
        let deadline =
            std::time::Instant::now() + std::time::Duration::from_millis(u64::from(self.cfg.lost_after_ms));
        while self.live().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if f.image_acceleration {
            self.prefetch(&deployed.image).await;
        }
        let live = self.live();
        let shares = super::place(
            f.min_scale,
            f.max_scale,
            deployed.memory_mb,
            &self.candidates(&live, &name, &deployed.image, deployed.memory_mb),
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
        let failures: Vec<String> = results
            .iter()
            .filter_map(|(a, _, r)| r.as_ref().err().map(|s| format!("agent {}: {}", a.node, s.message())))
            .collect();
        if failures.is_empty() {
            return Ok(deployed);
        }
        // Nothing half made: where this deploy put the function first, it goes again.
        for (a, was_there, r) in &results {
            if r.is_ok() && !was_there {
                let mut req = tonic::Request::new(apb::RemoveFunctionRequest { name: name.clone() });
                req.set_timeout(CALL_TIMEOUT);
                let _ = a.client.clone().remove_function(req).await;
                lock(&self.applied).remove(&(a.node.clone(), name.clone()));
            }
        }
        Err(failures.join("; "))
    }
}

//! Starting an instance: its image from the node cache (pulled on a miss), a network
//! namespace with an address, its output FIFOs, the container and task, then the wait
//! until it listens on :9000 — or its exit, which fails the start at once with its last
//! output. On any failure nothing of it is left.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use fnrt_common::secret::Secrets;
use fnrt_function::policy::{memory_advice, Limits};

use super::{CallSettings, Instance, Instances};
use crate::error::Error;
use crate::events;
use crate::health::{self, FUNCTION_PORT};
use crate::image::RunnableImage;
use crate::runtime::{labels, NewInstance};
use crate::stats::Usage;

/// A request to start an instance.
#[derive(Clone, Debug)]
pub struct StartRequest {
    /// Function name, validated by [`validate_function_name`].
    pub function: String,
    /// The name the instance sees as SCF_FUNCTIONNAME; `function` when empty.
    pub display_name: String,
    /// Image reference.
    pub image: String,
    /// The function's variables.
    pub env: BTreeMap<String, String>,
    /// Its secret variables (never logged).
    pub secrets: Secrets,
    /// Its version ("$LATEST" when empty).
    pub version: String,
    /// Its namespace ("default" when empty).
    pub namespace: String,
    /// Memory in MB; 0 for the default.
    pub memory_mb: u32,
    /// Longest a call may take, in ms; 0 for the default (3000). Recorded with the
    /// instance for the calls to it.
    pub timeout_ms: u32,
    /// Its start command when not the image's.
    pub process: fnrt_function::Process,
    /// Credentials for its image's registry, for a pull on a cache miss.
    pub credentials: Option<fnrt_function::PullCredentials>,
    /// Its sandbox class.
    pub class: fnrt_function::SandboxClass,
}

/// Checks a function name (see [`fnrt_function::naming::check`]).
pub fn validate_function_name(name: &str) -> Result<(), Error> {
    fnrt_function::naming::check("function name", name)
        .map_err(|e| Error::InvalidArgument { field: "function", reason: e.to_string() })
}

/// What a start checked and made before its network: limits, environment, call settings.
struct Checked {
    limits: Limits,
    env: BTreeMap<String, String>,
    call: CallSettings,
}

impl Instances {
    fn check(&self, req: &StartRequest) -> Result<Checked, Error> {
        validate_function_name(&req.function)?;
        req.process.check().map_err(|e| Error::InvalidArgument { field: e.field, reason: e.reason })?;
        self.check_class(req.class)?;
        let limits = self
            .parts
            .policy
            .limits(req.memory_mb)
            .map_err(|e| Error::InvalidArgument { field: "memory_mb", reason: e.to_string() })?;
        let call = CallSettings {
            version: if req.version.is_empty() { "$LATEST".into() } else { req.version.clone() },
            namespace: if req.namespace.is_empty() { "default".into() } else { req.namespace.clone() },
            display_name: req.display_name.clone(),
            timeout_ms: req.timeout_ms,
        };
        let shown = if req.display_name.is_empty() { &req.function } else { &req.display_name };
        let env = crate::env::build(
            &self.parts.identity,
            shown,
            &call.version,
            &call.namespace,
            &req.env,
            &req.secrets,
        )
        .map_err(|e| Error::InvalidArgument { field: "env", reason: e.to_string() })?;
        Ok(Checked { limits, env, call })
    }

    /// The sandbox classes this node offers.
    pub fn sandbox_classes(&self) -> Vec<fnrt_function::SandboxClass> {
        self.parts.runtime.classes().offered().to_vec()
    }

    /// Whether this node offers `class` (a refusal names the field and what is offered).
    pub fn check_class(&self, class: fnrt_function::SandboxClass) -> Result<(), Error> {
        self.parts
            .runtime
            .classes()
            .check(class)
            .map_err(|e| Error::InvalidArgument { field: "sandbox_class", reason: e.to_string() })
    }

    /// Starts an instance and returns once it accepts connections on :9000, with a warning
    /// when its memory is below what its image's size calls for. On any failure nothing of
    /// it is left.
    pub async fn start(&self, req: StartRequest) -> Result<(Instance, Option<String>), Error> {
        let checked = self.check(&req)?;
        let timeline = super::phases::Timeline::start();
        let id = format!("{}-{:08x}", req.function, rand::random::<u32>());
        self.parts.ledger.claim(&id, self.claim_of(&checked.limits))?;
        let image = match self
            .parts
            .images
            .for_start(&req.image, req.credentials.as_ref(), || self.images_in_use())
            .await
        {
            Ok(image) => image,
            Err(e) => {
                self.parts.ledger.release(&id);
                return Err(e);
            }
        };
        let (image, _starting) = image;
        timeline.mark("image");
        if let Err(e) = self.mark(&id).await {
            self.parts.ledger.release(&id);
            return Err(e);
        }
        let started = self.make(&id, &req, &checked, &image, &timeline).await;
        let (address, pid) = match started {
            Ok(done) => done,
            Err(e) => {
                if let Err(cleanup) = self.teardown(&id).await {
                    tracing::warn!(instance = %id, error = %cleanup, "cleanup after a failed start");
                }
                return Err(e);
            }
        };
        let inst = Instance {
            id: id.clone(),
            function: req.function,
            image: image.info.reference,
            address,
            netns: Some(self.parts.network.netns_path(&id).into()),
            state: "running".into(),
            pid,
            created_at: SystemTime::now(),
            limits: checked.limits,
            usage: Usage::default(),
            reason: String::new(),
            call: checked.call,
            alive: super::Alive::new(),
            phases: timeline.phases(),
            class: req.class,
        };
        for (phase, took) in &inst.phases.0 {
            self.parts.images.metrics().cold_start_phase(phase, *took);
        }
        self.lock().insert(id, inst.clone());
        let advice = memory_advice(image.info.size_bytes, inst.limits.memory_mb);
        if let Some(a) = &advice {
            tracing::warn!(instance = %inst.id, image = %inst.image, "{a}");
        }
        Ok((inst, advice))
    }

    /// Makes the instance's parts and starts it: its address and pid. The caller tears
    /// down what a failure leaves.
    async fn make(
        &self,
        id: &str,
        req: &StartRequest,
        checked: &Checked,
        image: &RunnableImage,
        timeline: &super::phases::Timeline,
    ) -> Result<(SocketAddr, u32), Error> {
        // The network and the /tmp do not need each other: both are made at once, and the
        // network phase covers both.
        let (attached, tmp) =
            tokio::join!(self.parts.network.attach(id), self.parts.runtime.make_scratch(id));
        let (attached, tmp) = (attached?, tmp?);
        let address = SocketAddr::new(attached.ip, FUNCTION_PORT);
        let address_text = address.to_string();
        let io = self.parts.logs.attach(id, &req.function).await?;
        timeline.mark("network");
        let call = &checked.call;
        let more_labels = [
            (labels::VERSION, call.version.clone()),
            (labels::NAMESPACE, call.namespace.clone()),
            (labels::DISPLAY_NAME, call.display_name.clone()),
            (labels::TIMEOUT_MS, call.timeout_ms.to_string()),
        ];
        let new = NewInstance {
            id,
            function: &req.function,
            image,
            netns: &attached.netns,
            tmp: &tmp,
            address: &address_text,
            env: &checked.env,
            limits: &checked.limits,
            io: &io,
            more_labels: &more_labels,
            process: &req.process,
            timeline,
            class: req.class,
        };
        let secret_values: Vec<&str> = req.secrets.0.values().map(String::as_str).collect();
        let pid = self.launch(&new, address, &secret_values).await?;
        Ok((address, pid))
    }

    /// Starts the instance's task and waits until it listens on :9000, or until it exits
    /// (a function that crashes at start fails its start at once, with its last output).
    async fn launch(
        &self,
        new: &NewInstance<'_>,
        address: SocketAddr,
        secrets: &[&str],
    ) -> Result<u32, Error> {
        let (tx, exited) = tokio::sync::oneshot::channel();
        self.exits_at_start.lock().unwrap_or_else(|p| p.into_inner()).insert(new.id.to_string(), tx);
        let result = async {
            let pid = self.parts.runtime.start(new).await?;
            tokio::select! {
                waited = health::wait_listening(address, self.parts.health_timeout) => {
                    let waited = waited?;
                    new.timeline.mark("listen");
                    self.settle_cpu(new).await?;
                    tracing::info!(instance = %new.id, %address, ready_ms = waited.as_millis() as u64, "instance ready");
                    Ok(pid)
                }
                Ok((status, oom)) = exited => Err(self.exited_at_start(new, status, oom, secrets).await),
            }
        }
        .await;
        self.exits_at_start.lock().unwrap_or_else(|p| p.into_inner()).remove(new.id);
        result
    }

    /// Drops a ready instance from its start-up CPU to its share. A gVisor sandbox keeps
    /// its start-up CPU one CFS period longer: its kernel is still finishing its own start
    /// when the function listens, and cut to 0.1 vCPU then, it used up its quota and made
    /// the first call wait up to a period (ready to first answer 7-91 ms at 0.1 vCPU, 6-19
    /// ms at a whole vCPU; BENCHMARKS.md, issue 22).
    async fn settle_cpu(&self, new: &NewInstance<'_>) -> Result<(), Error> {
        if new.class != fnrt_function::SandboxClass::Gvisor {
            return Ok(self.parts.runtime.settle_cpu(new.id, new.limits).await?);
        }
        let (runtime, id, limits) = (self.parts.runtime.clone(), new.id.to_string(), *new.limits);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(fnrt_function::policy::CPU_PERIOD_US)).await;
            if let Err(e) = runtime.settle_cpu(&id, &limits).await {
                // An instance stopped within the period has no cgroup left to settle.
                tracing::warn!(instance = %id, error = %e, "settling a gVisor instance's CPU");
            }
        });
        Ok(())
    }

    async fn exited_at_start(
        &self,
        new: &NewInstance<'_>,
        status: u32,
        oom: bool,
        secrets: &[&str],
    ) -> Error {
        let (_, reason) = events::reason(Some(status), oom, new.limits.memory_mb);
        // What it printed last usually says why; the pump reads it a moment after the exit.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let filter = crate::logs::Filter { instance: Some(new.id.to_string()), ..Default::default() };
        let logs = self.parts.logs.clone();
        let lines = tokio::task::spawn_blocking(move || logs.read(&filter)).await.unwrap_or_default();
        // The agent's answers never carry a secret, even one the function printed.
        let redact = |line: &str| {
            secrets.iter().filter(|s| !s.is_empty()).fold(line.to_string(), |l, s| l.replace(s, "<redacted>"))
        };
        let last: Vec<String> = lines.iter().rev().take(5).rev().map(|l| redact(&l.line)).collect();
        tracing::warn!(instance = %new.id, %reason, "instance ended before listening on :9000");
        Error::ExitedAtStart { reason, output: last }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn function_names_follow_the_rule_and_the_error_says_it() {
        for good in ["echo", "a", "fn-2", &"a".repeat(63)] {
            validate_function_name(good).expect(good);
        }
        for bad in ["", "Echo", "1fn", "fn-", "a_b", "a/b", &"a".repeat(64)] {
            let e = validate_function_name(bad).expect_err(bad).to_string();
            assert!(e.contains("1 to 63 characters"), "{e}");
        }
    }
}

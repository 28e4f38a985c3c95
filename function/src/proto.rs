//! Conversions between the shared types and `fnrt.agent.v1.FunctionSpec`: the control
//! plane sends a [`RawSpec`], an agent checks what it receives into a [`FunctionSpec`] and
//! shows it back without secret values.

use fnrt_proto::agent::v1 as pb;

use crate::spec::{FunctionSpec, Kind, PullCredentials, RawSpec, SpecError};

impl TryFrom<pb::FunctionSpec> for RawSpec {
    type Error = SpecError;

    fn try_from(f: pb::FunctionSpec) -> Result<RawSpec, SpecError> {
        let event = match pb::FunctionType::try_from(f.r#type) {
            Ok(pb::FunctionType::Http) => false,
            Ok(pb::FunctionType::Event) => true,
            Err(_) => {
                return Err(SpecError {
                    field: "type",
                    reason: format!(
                        "{} is not a function type: use FUNCTION_TYPE_HTTP or FUNCTION_TYPE_EVENT",
                        f.r#type
                    ),
                })
            }
        };
        Ok(RawSpec {
            name: f.name,
            namespace: f.namespace,
            version: f.version,
            image: f.image,
            event,
            memory_mb: f.memory_mb,
            timeout_ms: f.timeout_ms,
            env: f.env.into_iter().collect(),
            secrets: f.secrets.into_iter().collect(),
            provisioned: f.provisioned,
            max_instances: f.max_instances,
            concurrency: f.concurrency,
            keep_alive_s: f.keep_alive_s,
            queue_max: f.queue_max,
            queue_timeout_ms: f.queue_timeout_ms,
            display_name: f.display_name,
            process: crate::spec::Process { command: f.command, args: f.args },
            keep_image: f.keep_image,
            pull_credentials: f.registry_credentials.map(PullCredentials::from),
            sandbox_class: f.sandbox_class,
        })
    }
}

fn function_type(event: bool) -> i32 {
    if event {
        pb::FunctionType::Event as i32
    } else {
        pb::FunctionType::Http as i32
    }
}

impl From<RawSpec> for pb::FunctionSpec {
    fn from(r: RawSpec) -> pb::FunctionSpec {
        pb::FunctionSpec {
            name: r.name,
            namespace: r.namespace,
            version: r.version,
            image: r.image,
            r#type: function_type(r.event),
            memory_mb: r.memory_mb,
            timeout_ms: r.timeout_ms,
            env: r.env.into_iter().collect(),
            secrets: r.secrets.into_iter().collect(),
            provisioned: r.provisioned,
            max_instances: r.max_instances,
            concurrency: r.concurrency,
            keep_alive_s: r.keep_alive_s,
            queue_max: r.queue_max,
            queue_timeout_ms: r.queue_timeout_ms,
            display_name: r.display_name,
            command: r.process.command,
            args: r.process.args,
            keep_image: r.keep_image,
            registry_credentials: r.pull_credentials.map(pb::RegistryCredentials::from),
            sandbox_class: r.sandbox_class,
        }
    }
}

impl From<PullCredentials> for pb::RegistryCredentials {
    fn from(c: PullCredentials) -> pb::RegistryCredentials {
        pb::RegistryCredentials {
            registry: c.registry,
            username: c.username,
            password: c.password.expose().to_string(),
        }
    }
}

impl From<pb::RegistryCredentials> for PullCredentials {
    fn from(c: pb::RegistryCredentials) -> PullCredentials {
        PullCredentials { registry: c.registry, username: c.username, password: c.password.into() }
    }
}

fn saturating_ms(d: std::time::Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl FunctionSpec {
    /// The spec as the API shows it: the names of its secrets, never their values.
    pub fn to_proto_redacted(&self) -> pb::FunctionSpec {
        pb::FunctionSpec {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            version: self.version.clone(),
            image: self.image.clone(),
            r#type: function_type(self.kind == Kind::Event),
            memory_mb: self.memory_mb,
            timeout_ms: saturating_ms(self.timeout),
            env: self.env.clone().into_iter().collect(),
            secrets: Default::default(),
            provisioned: self.provisioned,
            max_instances: self.max_instances,
            concurrency: self.concurrency,
            keep_alive_s: u32::try_from(self.keep_alive.as_secs()).unwrap_or(u32::MAX),
            queue_max: self.queue_max,
            queue_timeout_ms: saturating_ms(self.queue_timeout),
            display_name: self.display_name.clone(),
            command: self.process.command.clone(),
            args: self.process.args.clone(),
            keep_image: self.keep_image,
            registry_credentials: None,
            sandbox_class: self.sandbox_class.as_str().into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_spec_goes_through_the_proto_unchanged_and_bad_types_are_named() {
        let raw = RawSpec {
            name: "f".into(),
            image: "r/i".into(),
            event: true,
            memory_mb: 256,
            secrets: [("K".to_string(), "v".to_string())].into(),
            process: crate::spec::Process { command: vec!["/bin/app".into()], args: vec!["-v".into()] },
            sandbox_class: "gvisor".into(),
            ..Default::default()
        };
        let back = RawSpec::try_from(pb::FunctionSpec::from(raw.clone())).unwrap();
        assert_eq!(format!("{back:?}"), format!("{raw:?}"));
        let bad = pb::FunctionSpec { r#type: 9, ..Default::default() };
        assert_eq!(RawSpec::try_from(bad).unwrap_err().field, "type");
        let checked = raw.check(&crate::Policy::default()).unwrap();
        let shown = checked.to_proto_redacted();
        assert!(shown.secrets.is_empty() && shown.r#type == pb::FunctionType::Event as i32);
    }
}

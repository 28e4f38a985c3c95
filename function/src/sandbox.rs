//! Sandbox classes: the wall between an instance and the node's kernel. Every class keeps
//! the same promises (own network namespace and address, cgroup limits, read-only root,
//! its own /tmp); they differ in what the function's system calls reach.
//!
//! - `runc`: a container on the host kernel, under the seccomp filter, in a user namespace.
//! - `gvisor`: the same container run by gVisor's `runsc`: the function's system calls go
//!   to gVisor's own kernel (the Sentry), which itself runs under a tight host filter; a
//!   second wall for code from strangers, at the cost of a slower start and slower system
//!   calls.
//!
//! An agent offers some classes (its `sandbox_classes` setting); a function asks for one
//! (its own `sandbox_class`, else its namespace's, else `runc`) and is only placed on
//! agents that offer it.

use std::fmt;
use std::str::FromStr;

/// One sandbox class.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum SandboxClass {
    /// A runc container on the host kernel (the default).
    #[default]
    Runc,
    /// A gVisor (runsc) sandbox.
    Gvisor,
}

/// Every class, in the order they are listed to users.
pub const ALL: [SandboxClass; 2] = [SandboxClass::Runc, SandboxClass::Gvisor];

/// A name that is no sandbox class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a sandbox class: use runc or gvisor")]
pub struct UnknownClass {
    /// The name given (at most 64 characters of it).
    pub name: String,
}

impl SandboxClass {
    /// Its name as the API, the config and the labels spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxClass::Runc => "runc",
            SandboxClass::Gvisor => "gvisor",
        }
    }

    /// The class a wire field names; the empty string (an older peer, a field left
    /// unset) is `runc`.
    pub fn from_wire(name: &str) -> Result<SandboxClass, UnknownClass> {
        if name.is_empty() {
            Ok(SandboxClass::Runc)
        } else {
            name.parse()
        }
    }

    /// Whether this is the default class (fields holding it are left out on the wire).
    pub fn is_default(&self) -> bool {
        *self == SandboxClass::Runc
    }
}

impl FromStr for SandboxClass {
    type Err = UnknownClass;

    fn from_str(s: &str) -> Result<SandboxClass, UnknownClass> {
        ALL.into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownClass { name: s.chars().take(64).collect() })
    }
}

impl fmt::Display for SandboxClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The classes a list of names offers; unknown names are skipped (a newer agent may offer
/// a class this build does not know), and an empty list (an agent older than classes)
/// offers `runc`.
pub fn offered(names: &[String]) -> Vec<SandboxClass> {
    if names.is_empty() {
        return vec![SandboxClass::Runc];
    }
    let mut classes: Vec<SandboxClass> = names.iter().filter_map(|n| n.parse().ok()).collect();
    classes.sort();
    classes.dedup();
    classes
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_say_what_is_allowed() {
        for c in ALL {
            assert_eq!(c.as_str().parse::<SandboxClass>().unwrap(), c);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
        assert_eq!(SandboxClass::from_wire("").unwrap(), SandboxClass::Runc);
        let e = "kata".parse::<SandboxClass>().unwrap_err().to_string();
        assert_eq!(e, "\"kata\" is not a sandbox class: use runc or gvisor");
        assert!("x".repeat(10_000).parse::<SandboxClass>().unwrap_err().name.len() <= 64);
        assert!("GVISOR".parse::<SandboxClass>().is_err(), "names are lowercase");
    }

    #[test]
    fn an_agent_without_classes_offers_runc() {
        assert_eq!(offered(&[]), vec![SandboxClass::Runc]);
        let names = ["gvisor", "future", "runc", "gvisor"].map(String::from);
        assert_eq!(offered(&names), vec![SandboxClass::Runc, SandboxClass::Gvisor]);
    }
}

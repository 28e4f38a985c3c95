//! Names: of functions on agents (the data plane's route, part of instance ids, netns and
//! cgroup names) and of the control plane's namespaces and functions.

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{name:?} is not a valid {what}: use 1 to 63 characters of a-z, 0-9 and '-', starting with a \
     letter and not ending with '-'"
)]
pub struct BadName {
    /// What was named ("function name", "name").
    pub what: &'static str,
    /// The name given.
    pub name: String,
}

/// Checks a name: 1 to 63 of a-z, 0-9 and '-', starting with a letter, not ending with '-'
/// (it becomes part of host names, ids and paths).
pub fn check(what: &'static str, name: &str) -> Result<(), BadName> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BadName { what, name: name.to_string() })
    }
}

/// The name a control-plane function of id `id` (a UUID) has on the agents.
pub fn on_agents(id: &str) -> String {
    format!("fn-{id}")
}

/// Whether `name` is one [`on_agents`] made (the control plane leaves other functions an
/// operator deployed on an agent alone).
pub fn is_from_control_plane(name: &str) -> bool {
    name.strip_prefix("fn-").is_some_and(|id| id.len() == 36)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rule_and_the_error_says_it() {
        for good in ["echo", "a", "fn-2", &"a".repeat(63)] {
            assert!(check("function name", good).is_ok(), "{good}");
        }
        for bad in ["", "Echo", "1fn", "fn-", "a_b", "a/b", "a.b", &"a".repeat(64)] {
            let e = check("function name", bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains("1 to 63 characters") && e.contains("function name"), "{e}");
        }
    }

    #[test]
    fn control_plane_names_are_told_apart() {
        let name = on_agents("3f0c5d9e-1111-4222-8333-444455556666");
        assert!(is_from_control_plane(&name) && check("function name", &name).is_ok());
        assert!(!is_from_control_plane("fn-echo") && !is_from_control_plane("echo"));
    }
}

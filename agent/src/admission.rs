//! The node's admission budgets: how many instances it runs, how much memory their limits
//! add up to, and the disk their /tmp files and logs may take. A start claims its share
//! before anything of it is made, and a start past a budget fails naming the budget; an
//! instance's claim is released when it is torn down. Instances adopted after a restart
//! are claimed whatever the budgets say (they run already).

use std::collections::HashMap;
use std::sync::Mutex;

/// The node's budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budgets {
    /// Instances at once.
    pub instances: u32,
    /// Sum of the instances' memory limits, in MB.
    pub memory_mb: u64,
    /// Sum of the instances' /tmp files, in bytes.
    pub scratch_bytes: u64,
    /// Sum of the instances' log files (`log_max_bytes` × `log_files` each), in bytes.
    pub log_bytes: u64,
}

/// What one instance holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Its memory limit in MB.
    pub memory_mb: u64,
    /// Its /tmp file's size.
    pub scratch_bytes: u64,
    /// Its logs' most.
    pub log_bytes: u64,
}

/// A start past a budget.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("node budget {budget} exhausted: {used} {unit} in use, this instance needs {wanted} more, the budget is {limit} (agent setting {setting})")]
pub struct Exhausted {
    /// Which budget.
    pub budget: &'static str,
    /// What is claimed already.
    pub used: u64,
    /// What this start wanted.
    pub wanted: u64,
    /// The budget.
    pub limit: u64,
    /// Its unit.
    pub unit: &'static str,
    /// The agent setting that sets it.
    pub setting: &'static str,
}

/// The claims of the node's instances against its budgets.
#[derive(Debug)]
pub struct Ledger {
    budgets: Budgets,
    claims: Mutex<HashMap<String, Claim>>,
}

impl Ledger {
    /// An empty ledger over `budgets`.
    pub fn new(budgets: Budgets) -> Ledger {
        Ledger { budgets, claims: Mutex::new(HashMap::new()) }
    }

    /// The budgets.
    pub fn budgets(&self) -> Budgets {
        self.budgets
    }

    /// Sums of what is claimed: (instances, memory MB, scratch bytes, log bytes).
    pub fn used(&self) -> (u32, u64, u64, u64) {
        let claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let sum = |f: fn(&Claim) -> u64| claims.values().map(f).sum::<u64>();
        (claims.len() as u32, sum(|c| c.memory_mb), sum(|c| c.scratch_bytes), sum(|c| c.log_bytes))
    }

    /// Claims `claim` for instance `id` if every budget has room for it.
    pub fn claim(&self, id: &str, claim: Claim) -> Result<(), Exhausted> {
        let mut claims = self.claims.lock().unwrap_or_else(|p| p.into_inner());
        let b = self.budgets;
        let sum = |f: fn(&Claim) -> u64| claims.values().map(f).sum::<u64>();
        let checks = [
            ("instances", claims.len() as u64, 1, u64::from(b.instances), "instances", "max_instances"),
            ("memory", sum(|c| c.memory_mb), claim.memory_mb, b.memory_mb, "MB", "memory_budget_mb"),
            (
                "scratch disk",
                sum(|c| c.scratch_bytes),
                claim.scratch_bytes,
                b.scratch_bytes,
                "bytes",
                "scratch_budget_bytes",
            ),
            ("log disk", sum(|c| c.log_bytes), claim.log_bytes, b.log_bytes, "bytes", "log_budget_bytes"),
        ];
        for (budget, used, wanted, limit, unit, setting) in checks {
            if used + wanted > limit {
                return Err(Exhausted { budget, used, wanted, limit, unit, setting });
            }
        }
        claims.insert(id.to_string(), claim);
        Ok(())
    }

    /// Claims for an instance that runs already (adopted), whatever the budgets say.
    pub fn force(&self, id: &str, claim: Claim) {
        self.claims.lock().unwrap_or_else(|p| p.into_inner()).insert(id.to_string(), claim);
    }

    /// Releases what instance `id` held; nothing if it held nothing.
    pub fn release(&self, id: &str) {
        self.claims.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// Default budgets from the node: memory is its total less 1 GiB for the node itself;
/// disk is 90% of what the state directory's filesystem has free at start (the /tmp files
/// get four fifths of that, the logs one fifth).
pub fn node_defaults(state_dir: &std::path::Path) -> (u64, u64, u64) {
    let total_mb = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?.to_string();
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(4096, |kb| kb / 1024);
    let free =
        nix::sys::statvfs::statvfs(state_dir).map(|s| s.blocks_available() * s.fragment_size()).unwrap_or(0);
    let disk = free / 10 * 9;
    (total_mb.saturating_sub(1024).max(512), disk / 5 * 4, disk / 5)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const ONE: Claim = Claim { memory_mb: 128, scratch_bytes: 100, log_bytes: 10 };

    #[test]
    fn each_budget_refuses_by_name_and_a_release_makes_room() {
        let l = Ledger::new(Budgets { instances: 2, memory_mb: 1000, scratch_bytes: 1000, log_bytes: 1000 });
        l.claim("a", ONE).unwrap();
        l.claim("b", ONE).unwrap();
        let e = l.claim("c", ONE).unwrap_err();
        assert_eq!((e.budget, e.setting), ("instances", "max_instances"));
        l.release("a");
        l.claim("c", ONE).unwrap();
        assert_eq!(l.used(), (2, 256, 200, 20));

        let l = Ledger::new(Budgets { instances: 10, memory_mb: 200, scratch_bytes: 1000, log_bytes: 1000 });
        l.claim("a", ONE).unwrap();
        let e = l.claim("b", ONE).unwrap_err();
        assert_eq!(e.budget, "memory");
        assert!(
            e.to_string().contains("128 MB in use, this instance needs 128 more, the budget is 200"),
            "{e}"
        );
        let l = Ledger::new(Budgets { instances: 10, memory_mb: 1000, scratch_bytes: 150, log_bytes: 1000 });
        l.claim("a", ONE).unwrap();
        assert_eq!(l.claim("b", ONE).unwrap_err().budget, "scratch disk");
        let l = Ledger::new(Budgets { instances: 10, memory_mb: 1000, scratch_bytes: 1000, log_bytes: 15 });
        l.claim("a", ONE).unwrap();
        assert_eq!(l.claim("b", ONE).unwrap_err().budget, "log disk");
        // An adopted instance is kept even past a budget; new ones then wait for room.
        l.force("adopted", ONE);
        assert_eq!(l.used().0, 2);
    }
}

//! What an instance uses, read from its cgroup with cgroups-rs: cgroup v1 (per-controller
//! hierarchies, as on this project's machines) or v2 (the unified hierarchy most
//! production nodes run), whichever the node mounts.
//!
//! The reads are file reads in cgroupfs: call [`read`] from a blocking thread.

use cgroups_rs::cgroup::Cgroup;
use cgroups_rs::cpu::CpuController;
use cgroups_rs::cpuacct::CpuAcctController;
use cgroups_rs::hierarchies;
use cgroups_rs::memory::MemController;
use cgroups_rs::Controller;

/// Resource use of one cgroup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory charged to it now, in bytes (page cache included, as the limit counts it).
    pub memory_bytes: u64,
    /// CPU time it has used, in nanoseconds.
    pub cpu_ns: u64,
}

/// The use of the cgroup at `path` (relative to the cgroup roots, as in the OCI spec's
/// `cgroupsPath`). A cgroup that is gone reads as zero.
pub fn read(path: &str) -> Usage {
    let hierarchy = hierarchies::auto();
    let v2 = hierarchy.v2();
    let cg = Cgroup::load(hierarchy, path.trim_start_matches('/'));
    let memory_bytes = cg.controller_of::<MemController>().map_or(0, |m| m.memory_stat().usage_in_bytes);
    let cpu_ns = if v2 {
        cg.controller_of::<CpuController>().map_or(0, |c| usage_usec(&c.cpu().stat).saturating_mul(1000))
    } else {
        cg.controller_of::<CpuAcctController>().map_or(0, |c| c.cpuacct().usage)
    };
    Usage { memory_bytes, cpu_ns }
}

/// Removes the cgroup at `path` if it is still there: runc removes an instance's cgroup
/// with its container, but not when an agent or shim crash cut that short. Fails while
/// processes are in it.
pub fn remove(path: &str) -> Result<(), String> {
    let hierarchy = hierarchies::auto();
    let rel = path.trim_start_matches('/');
    if hierarchy.v2() && !hierarchy.root().join(rel).exists() {
        return Ok(());
    }
    Cgroup::load(hierarchy, rel).delete().map_err(|e| e.to_string())
}

/// Sets the CFS quota of the cgroup at `path` (per its period), as an instance that is
/// ready drops from its start-up CPU to its share.
pub fn set_cpu_quota(path: &str, quota_us: i64) -> Result<(), String> {
    let cg = Cgroup::load(hierarchies::auto(), path.trim_start_matches('/'));
    let cpu = cg.controller_of::<CpuController>().ok_or("the node mounts no cpu controller")?;
    cpu.set_cfs_quota(quota_us).map_err(|e| e.to_string())?;
    match cpu.cfs_quota() {
        Ok(now) if now == quota_us => Ok(()),
        Ok(now) => Err(format!("its quota reads {now} µs after setting {quota_us} µs")),
        Err(e) => Err(e.to_string()),
    }
}

/// How many times the kernel's OOM killer acted in the cgroup at `path` (0 if it is gone).
pub fn oom_kills(path: &str) -> u64 {
    let hierarchy = hierarchies::auto();
    let v2 = hierarchy.v2();
    let cg = Cgroup::load(hierarchy, path.trim_start_matches('/'));
    let Some(mem) = cg.controller_of::<MemController>() else { return 0 };
    if v2 {
        // cgroups-rs does not read memory.events; it is one line to find.
        let events = std::fs::read_to_string(mem.path().join("memory.events")).unwrap_or_default();
        events
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    } else {
        mem.memory_stat().oom_control.oom_kill
    }
}

/// `usage_usec` of a cgroup v2 `cpu.stat`.
fn usage_usec(stat: &str) -> u64 {
    stat.lines().find_map(|l| l.strip_prefix("usage_usec ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_cpu_stat_usage_is_read() {
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(usage_usec(stat), 123_456);
        assert_eq!(usage_usec("nr_periods 3\n"), 0);
    }

    #[test]
    fn a_cgroup_that_is_not_there_reads_as_zero() {
        assert_eq!(read("/fnrt/no-such-instance-here"), Usage::default());
    }
}

//! Where a function's instances go: pure logic over what agents reported.

/// An agent as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Node name.
    pub node: String,
    /// MB not taken by instance limits.
    pub free_memory_mb: u64,
    /// Milli-CPUs not taken by instance limits.
    pub free_cpu_millis: u64,
    /// More instances its budgets take (count, /tmp disk, log disk).
    pub room_instances: u32,
    /// The milli-CPUs this agent gives one instance of the function (by its own policy).
    pub cpu_millis_needed: u32,
    /// The function's image is in its cache.
    pub has_image: bool,
    /// It runs the function already.
    pub hosts: bool,
}

/// One agent's part of a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Node name.
    pub node: String,
    /// Instances it keeps warm.
    pub provisioned: u32,
    /// Most instances it runs.
    pub max_instances: u32,
}

/// Spreads `min_scale` warm instances over as many agents as that takes (one agent when
/// there are none to keep), and `max_scale` over the same agents, so the totals are the
/// function's. Agents that run the function already come first (no churn), then agents
/// that have its image cached, then those with the most free memory. An agent that does
/// not run it yet must have room for one instance: `memory_mb`, the milli-CPUs its
/// policy gives that memory, and one more instance in its budgets.
pub fn place(
    min_scale: u32,
    max_scale: u32,
    memory_mb: u32,
    candidates: &[Candidate],
) -> Result<Vec<Share>, super::ScheduleError> {
    let fits = |c: &&Candidate| {
        c.hosts
            || (c.free_memory_mb >= u64::from(memory_mb)
                && c.free_cpu_millis >= u64::from(c.cpu_millis_needed)
                && c.room_instances >= 1)
    };
    let cpu_millis = candidates.iter().map(|c| c.cpu_millis_needed).min().unwrap_or(0);
    let mut eligible: Vec<&Candidate> = candidates.iter().filter(fits).collect();
    if eligible.is_empty() {
        return Err(if candidates.is_empty() {
            super::ScheduleError::NoAgent
        } else {
            super::ScheduleError::NoRoom { memory_mb, cpu_millis, agents: candidates.len() }
        });
    }
    eligible.sort_by(|a, b| {
        b.hosts
            .cmp(&a.hosts)
            .then(b.has_image.cmp(&a.has_image))
            .then(b.free_memory_mb.cmp(&a.free_memory_mb))
            .then(a.node.cmp(&b.node))
    });
    let k = (min_scale.max(1) as usize).min(eligible.len()).min(max_scale.max(1) as usize);
    let split = |total: u32, i: usize| total / k as u32 + u32::from((i as u32) < total % k as u32);
    Ok(eligible[..k]
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let provisioned = split(min_scale, i);
            Share {
                node: c.node.clone(),
                provisioned,
                max_instances: split(max_scale, i).max(provisioned).max(1),
            }
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn c(node: &str, free: u64, has_image: bool, hosts: bool) -> Candidate {
        Candidate {
            node: node.into(),
            free_memory_mb: free,
            free_cpu_millis: 2000,
            room_instances: 10,
            cpu_millis_needed: 143,
            has_image,
            hosts,
        }
    }

    #[test]
    fn cpu_counts_too() {
        let mut busy = c("a", 8192, true, false);
        busy.free_cpu_millis = 50;
        let s = place(1, 1, 256, &[busy, c("b", 1024, false, false)]).unwrap();
        assert_eq!(s[0].node, "b");
    }

    #[test]
    fn an_agent_whose_budgets_are_full_gets_no_new_function() {
        let mut full = c("a", 8192, true, false);
        full.room_instances = 0;
        let s = place(1, 1, 256, &[full.clone(), c("b", 1024, false, false)]).unwrap();
        assert_eq!(s[0].node, "b");
        assert!(place(1, 1, 256, &[full]).is_err());
    }

    #[test]
    fn spreads_warm_instances_and_keeps_totals() {
        let agents = [c("a", 4096, false, false), c("b", 4096, false, false), c("c", 4096, false, false)];
        let s = place(4, 10, 256, &agents).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().map(|s| s.provisioned).sum::<u32>(), 4);
        assert_eq!(s.iter().map(|s| s.max_instances).sum::<u32>(), 10);
        let one = place(0, 5, 256, &agents).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].max_instances, 5);
    }

    #[test]
    fn prefers_hosts_then_cached_images_then_free_memory_and_respects_capacity() {
        let agents = [c("a", 8192, false, false), c("b", 1024, true, false), c("c", 100, false, true)];
        assert_eq!(place(1, 1, 256, &agents).unwrap()[0].node, "c");
        let agents = [c("a", 8192, false, false), c("b", 1024, true, false)];
        assert_eq!(place(1, 1, 256, &agents).unwrap()[0].node, "b");
        let agents = [c("a", 8192, false, false), c("b", 100, true, false)];
        assert_eq!(
            place(2, 2, 256, &agents).unwrap(),
            vec![Share { node: "a".into(), provisioned: 2, max_instances: 2 }]
        );
        assert!(place(1, 1, 256, &[c("a", 100, false, false)])
            .unwrap_err()
            .to_string()
            .contains("256 MB and 143 milli-CPUs free"));
        assert!(place(1, 1, 256, &[]).unwrap_err().to_string().contains("no agent"));
    }

    #[test]
    fn a_lost_agent_share_moves_to_the_rest() {
        let both = [c("a", 4096, true, true), c("b", 4096, true, true)];
        let s = place(2, 4, 256, &both).unwrap();
        assert_eq!(s.iter().map(|s| s.provisioned).collect::<Vec<_>>(), vec![1, 1]);
        let s = place(2, 4, 256, &both[1..]).unwrap();
        assert_eq!(s, vec![Share { node: "b".into(), provisioned: 2, max_instances: 4 }]);
    }
}

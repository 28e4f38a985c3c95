//! Where a function's instances go: pure logic over what agents reported.

use fnrt_function::SandboxClass;

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
    /// The sandbox classes it offers.
    pub classes: Vec<SandboxClass>,
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
/// function's. Only agents that offer the function's sandbox `class` take it. Agents
/// that run the function already come first (no churn), then agents that have its image
/// cached, then those with the most free memory. An agent that does not run it yet must
/// have room for one instance: `memory_mb`, the milli-CPUs its policy gives that memory,
/// and one more instance in its budgets.
pub fn place(
    min_scale: u32,
    max_scale: u32,
    memory_mb: u32,
    class: SandboxClass,
    candidates: &[Candidate],
) -> Result<Vec<Share>, super::ScheduleError> {
    let offering: Vec<&Candidate> = candidates.iter().filter(|c| c.classes.contains(&class)).collect();
    if offering.is_empty() && !candidates.is_empty() {
        let mut offered: Vec<SandboxClass> =
            candidates.iter().flat_map(|c| c.classes.iter().copied()).collect();
        offered.sort();
        offered.dedup();
        let offered = if offered.is_empty() { "none".into() } else { crate::sandbox::list(&offered) };
        return Err(super::ScheduleError::NoClass { class, offered, agents: candidates.len() });
    }
    let fits = |c: &&Candidate| {
        c.hosts
            || (c.free_memory_mb >= u64::from(memory_mb)
                && c.free_cpu_millis >= u64::from(c.cpu_millis_needed)
                && c.room_instances >= 1)
    };
    let cpu_millis = offering.iter().map(|c| c.cpu_millis_needed).min().unwrap_or(0);
    let mut eligible: Vec<&Candidate> = offering.iter().copied().filter(fits).collect();
    if eligible.is_empty() {
        return Err(if candidates.is_empty() {
            super::ScheduleError::NoAgent
        } else {
            super::ScheduleError::NoRoom { memory_mb, cpu_millis, agents: offering.len() }
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
            classes: vec![SandboxClass::Runc],
        }
    }

    #[test]
    fn only_agents_offering_the_class_take_the_function() {
        let mut gvisor = c("g", 1024, false, false);
        gvisor.classes = vec![SandboxClass::Runc, SandboxClass::Gvisor];
        let runc = c("r", 8192, true, false);
        let s = place(1, 1, 256, SandboxClass::Gvisor, &[runc.clone(), gvisor.clone()]).unwrap();
        assert_eq!(s.iter().map(|s| s.node.as_str()).collect::<Vec<_>>(), vec!["g"]);
        // Spread over what offers it only, however many warm instances are asked for.
        assert_eq!(place(3, 3, 256, SandboxClass::Gvisor, &[runc.clone(), gvisor.clone()]).unwrap().len(), 1);
        // runc goes to the freest, a node offering gVisor too included.
        let mut both = c("b", 16384, false, false);
        both.classes = vec![SandboxClass::Runc, SandboxClass::Gvisor];
        assert_eq!(
            place(1, 1, 256, SandboxClass::Runc, &[c("r", 1024, false, false), both]).unwrap()[0].node,
            "b"
        );
        // A host that does not offer the class (the function's changed) gives it up.
        let hosting = c("h", 8192, true, true);
        let s = place(1, 1, 256, SandboxClass::Gvisor, &[hosting.clone(), gvisor]).unwrap();
        assert_eq!(s[0].node, "g");
        let e = place(1, 1, 256, SandboxClass::Gvisor, &[hosting, runc]).unwrap_err().to_string();
        assert_eq!(e, "no agent offers sandbox class gvisor (2 agents connected, offering runc)");
    }

    #[test]
    fn no_room_counts_only_the_agents_offering_the_class() {
        let mut small = c("g", 100, false, false);
        small.classes = vec![SandboxClass::Gvisor];
        let e = place(1, 1, 256, SandboxClass::Gvisor, &[small, c("r", 8192, false, false)]).unwrap_err();
        assert!(e.to_string().contains("(1 agents connected)"), "{e}");
    }

    #[test]
    fn cpu_counts_too() {
        let mut busy = c("a", 8192, true, false);
        busy.free_cpu_millis = 50;
        let s = place(1, 1, 256, SandboxClass::Runc, &[busy, c("b", 1024, false, false)]).unwrap();
        assert_eq!(s[0].node, "b");
    }

    #[test]
    fn an_agent_whose_budgets_are_full_gets_no_new_function() {
        let mut full = c("a", 8192, true, false);
        full.room_instances = 0;
        let s = place(1, 1, 256, SandboxClass::Runc, &[full.clone(), c("b", 1024, false, false)]).unwrap();
        assert_eq!(s[0].node, "b");
        assert!(place(1, 1, 256, SandboxClass::Runc, &[full]).is_err());
    }

    #[test]
    fn spreads_warm_instances_and_keeps_totals() {
        let agents = [c("a", 4096, false, false), c("b", 4096, false, false), c("c", 4096, false, false)];
        let s = place(4, 10, 256, SandboxClass::Runc, &agents).unwrap();
        assert_eq!(s.len(), 3);
        assert_eq!(s.iter().map(|s| s.provisioned).sum::<u32>(), 4);
        assert_eq!(s.iter().map(|s| s.max_instances).sum::<u32>(), 10);
        let one = place(0, 5, 256, SandboxClass::Runc, &agents).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].max_instances, 5);
    }

    #[test]
    fn prefers_hosts_then_cached_images_then_free_memory_and_respects_capacity() {
        let agents = [c("a", 8192, false, false), c("b", 1024, true, false), c("c", 100, false, true)];
        assert_eq!(place(1, 1, 256, SandboxClass::Runc, &agents).unwrap()[0].node, "c");
        let agents = [c("a", 8192, false, false), c("b", 1024, true, false)];
        assert_eq!(place(1, 1, 256, SandboxClass::Runc, &agents).unwrap()[0].node, "b");
        let agents = [c("a", 8192, false, false), c("b", 100, true, false)];
        assert_eq!(
            place(2, 2, 256, SandboxClass::Runc, &agents).unwrap(),
            vec![Share { node: "a".into(), provisioned: 2, max_instances: 2 }]
        );
        assert!(place(1, 1, 256, SandboxClass::Runc, &[c("a", 100, false, false)])
            .unwrap_err()
            .to_string()
            .contains("256 MB and 143 milli-CPUs free"));
        assert!(place(1, 1, 256, SandboxClass::Runc, &[]).unwrap_err().to_string().contains("no agent"));
    }

    #[test]
    fn a_lost_agent_share_moves_to_the_rest() {
        let both = [c("a", 4096, true, true), c("b", 4096, true, true)];
        let s = place(2, 4, 256, SandboxClass::Runc, &both).unwrap();
        assert_eq!(s.iter().map(|s| s.provisioned).collect::<Vec<_>>(), vec![1, 1]);
        let s = place(2, 4, 256, SandboxClass::Runc, &both[1..]).unwrap();
        assert_eq!(s, vec![Share { node: "b".into(), provisioned: 2, max_instances: 4 }]);
    }
}

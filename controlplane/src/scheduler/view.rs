//! A reconcile pass's view of the live agents, built once per pass: what each hosts (by
//! its report and by what the scheduler put there), which images it holds, and the room
//! it has left, less what this pass has placed on it already. Placing a function then
//! looks only at the agents that host it when they are enough, and at every agent only
//! for new placements, so a pass over many functions and agents stays cheap.

use std::collections::{HashMap, HashSet};

use super::agents::Agent;
use super::placement::{Candidate, Share};

/// One agent's room, as this pass sees it.
struct Room {
    node: String,
    free_memory_mb: u64,
    free_cpu_millis: u64,
    room_instances: u32,
    policy: fnrt_function::Policy,
    images: HashSet<String>,
    classes: Vec<fnrt_function::SandboxClass>,
}

/// The pass's view.
pub(super) struct View {
    rooms: Vec<Room>,
    /// Function name → the agents (indices into `rooms`) that host it.
    hosted: HashMap<String, Vec<usize>>,
    /// Node name → its index in `rooms`.
    index: HashMap<String, usize>,
}

impl View {
    /// The view of `live`, where `applied` are the (node, function) pairs the scheduler put.
    pub(super) fn of<'a>(live: &[Agent], applied: impl Iterator<Item = &'a (String, String)>) -> View {
        let index: HashMap<&str, usize> =
            live.iter().enumerate().map(|(i, a)| (a.node.as_str(), i)).collect();
        let mut hosted: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, a) in live.iter().enumerate() {
            for f in &a.report.functions {
                hosted.entry(f.name.clone()).or_default().push(i);
            }
        }
        for (node, name) in applied {
            if let Some(i) = index.get(node.as_str()) {
                let on = hosted.entry(name.clone()).or_default();
                if !on.contains(i) {
                    on.push(*i);
                }
            }
        }
        let rooms = live
            .iter()
            .map(|a| Room {
                node: a.node.clone(),
                free_memory_mb: a.free_memory_mb(),
                free_cpu_millis: a.free_cpu_millis(),
                room_instances: a.room_instances(),
                policy: a.policy(),
                images: a.report.images.iter().cloned().collect(),
                classes: a.classes(),
            })
            .collect();
        let index = live.iter().enumerate().map(|(i, a)| (a.node.clone(), i)).collect();
        View { rooms, hosted, index }
    }

    /// The nodes that host function `name`.
    pub(super) fn hosts(&self, name: &str) -> impl Iterator<Item = &str> {
        self.hosted.get(name).into_iter().flatten().map(|i| self.rooms[*i].node.as_str())
    }

    fn candidate(&self, i: usize, hosts: bool, image: &str, memory_mb: u32) -> Candidate {
        let r = &self.rooms[i];
        Candidate {
            node: r.node.clone(),
            free_memory_mb: r.free_memory_mb,
            free_cpu_millis: r.free_cpu_millis,
            room_instances: r.room_instances,
            // An agent refuses memory out of its range: it cannot take the function.
            cpu_millis_needed: r.policy.limits(memory_mb).map_or(u32::MAX, |l| l.cpu_millis),
            has_image: r.images.contains(image),
            hosts,
            classes: r.classes.clone(),
        }
    }

    /// The candidates for function `name` of sandbox `class` that wants `k` agents: its
    /// hosts that offer the class when they are enough (placement prefers them anyway),
    /// else every agent.
    pub(super) fn candidates(
        &self,
        name: &str,
        k: usize,
        image: &str,
        memory_mb: u32,
        class: fnrt_function::SandboxClass,
    ) -> Vec<Candidate> {
        let on = self.hosted.get(name).map_or(&[][..], Vec::as_slice);
        if on.iter().filter(|i| self.rooms[**i].classes.contains(&class)).count() >= k.max(1) {
            return on.iter().map(|i| self.candidate(*i, true, image, memory_mb)).collect();
        }
        (0..self.rooms.len()).map(|i| self.candidate(i, on.contains(&i), image, memory_mb)).collect()
    }

    /// Counts `shares` of a function of `memory_mb` against the room of the agents that
    /// did not host it yet (their reports do not show it).
    pub(super) fn reserve(&mut self, name: &str, shares: &[Share], memory_mb: u32) {
        for s in shares {
            let Some(&i) = self.index.get(&s.node) else { continue };
            let on = self.hosted.entry(name.to_string()).or_default();
            if on.contains(&i) {
                continue;
            }
            on.push(i);
            let r = &mut self.rooms[i];
            let n = u64::from(s.provisioned.max(1));
            let cpu = r.policy.limits(memory_mb).map_or(0, |l| u64::from(l.cpu_millis));
            r.free_memory_mb = r.free_memory_mb.saturating_sub(u64::from(memory_mb) * n);
            r.free_cpu_millis = r.free_cpu_millis.saturating_sub(cpu * n);
            r.room_instances = r.room_instances.saturating_sub(s.provisioned.max(1));
        }
    }
}

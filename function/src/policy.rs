//! An instance's resource limits: memory from the function's setting, CPU in proportion to
//! memory (as large FaaS platforms share it out), a pids limit; and the advice on memory
//! that an image's size calls for. The agents apply a [`Policy`] from their configuration
//! and report it; the control plane places with the policy of each agent.

/// The smallest and largest memory a function may ask for, in MB.
pub const MEMORY_MB_RANGE: std::ops::RangeInclusive<u32> = 64..=32_768;

/// Memory of an instance whose request does not say, in MB (SCF's default).
pub const DEFAULT_MEMORY_MB: u32 = 128;

/// How the node turns a memory setting into the other limits; from the agent's config.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Memory that buys one whole vCPU, in MB (1,792 by default).
    pub mb_per_vcpu: u32,
    /// The least CPU an instance gets, in thousandths of a vCPU.
    pub min_cpu_millis: u32,
    /// Processes and threads an instance may have.
    pub pids: u32,
}

/// The limits of one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Memory, in MB (MiB); no swap on top.
    pub memory_mb: u32,
    /// CPU time, in thousandths of a vCPU (a CFS quota per 100 ms period).
    pub cpu_millis: u32,
    /// Processes and threads.
    pub pids: u32,
}

/// CFS period of every instance, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;

impl Limits {
    /// Memory in bytes.
    pub fn memory_bytes(&self) -> i64 {
        i64::from(self.memory_mb) << 20
    }

    /// CFS quota per [`CPU_PERIOD_US`], in microseconds.
    pub fn cpu_quota_us(&self) -> i64 {
        (u64::from(self.cpu_millis) * CPU_PERIOD_US / 1000) as i64
    }

    /// The CFS quota while the instance starts: `startup_millis` of a vCPU when that is
    /// more than its share (its weight, [`Limits::cpu_shares`], stays its own).
    pub fn startup_cpu_quota_us(&self, startup_millis: u32) -> i64 {
        Limits { cpu_millis: self.cpu_millis.max(startup_millis), ..*self }.cpu_quota_us()
    }

    /// CPU shares (weight against the node's other cgroups), 1,024 per vCPU.
    pub fn cpu_shares(&self) -> u64 {
        (u64::from(self.cpu_millis) * 1024 / 1000).max(2)
    }
}

/// A memory setting out of range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("memory_mb {0} is out of range: use {min} to {max} MB (0 means {DEFAULT_MEMORY_MB})", min = MEMORY_MB_RANGE.start(), max = MEMORY_MB_RANGE.end())]
pub struct BadMemory(pub u32);

impl Default for Policy {
    /// 1 vCPU per 1,792 MB (Scaleway's and Lambda's proportion), at least 0.1 vCPU, 1,024
    /// processes and threads (SCF's).
    fn default() -> Policy {
        Policy { mb_per_vcpu: 1792, min_cpu_millis: 100, pids: 1024 }
    }
}

impl Policy {
    /// The limits of an instance with `memory_mb` of memory (0: the default).
    pub fn limits(&self, memory_mb: u32) -> Result<Limits, BadMemory> {
        let memory_mb = if memory_mb == 0 { DEFAULT_MEMORY_MB } else { memory_mb };
        if !MEMORY_MB_RANGE.contains(&memory_mb) {
            return Err(BadMemory(memory_mb));
        }
        let share = (u64::from(memory_mb) * 1000 / u64::from(self.mb_per_vcpu.max(1))) as u32;
        Ok(Limits { memory_mb, cpu_millis: share.max(self.min_cpu_millis), pids: self.pids })
    }
}

/// A warning when `memory_mb` is below what an image of `image_bytes` calls for: under
/// 256 MB of image, 256 to 512 MB of memory; 256 to 512 MB of image, 512 MB to 1 GiB;
/// 512 MB to 1 GiB of image, over 1 GiB.
pub fn memory_advice(image_bytes: u64, memory_mb: u32) -> Option<String> {
    const MB: u64 = 1 << 20;
    let (least, advised) = match image_bytes {
        b if b < 256 * MB => (256, "256 to 512 MB"),
        b if b < 512 * MB => (512, "512 MB to 1 GiB"),
        _ => (1025, "over 1 GiB"),
    };
    (memory_mb < least).then(|| {
        format!(
            "memory {memory_mb} MB is below what an image of {} MB calls for ({advised}); \
             instances may start slowly or run out of memory",
            image_bytes.div_ceil(MB)
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const POLICY: Policy = Policy { mb_per_vcpu: 1792, min_cpu_millis: 100, pids: 1024 };

    #[test]
    fn cpu_follows_memory_with_a_floor() {
        assert_eq!(POLICY.limits(1792).unwrap().cpu_millis, 1000);
        assert_eq!(POLICY.limits(448).unwrap().cpu_millis, 250);
        assert_eq!(POLICY.limits(3584).unwrap().cpu_millis, 2000);
        assert_eq!(POLICY.limits(128).unwrap().cpu_millis, 100, "the floor");
        let l = POLICY.limits(256).unwrap();
        assert_eq!((l.cpu_quota_us(), l.startup_cpu_quota_us(1000)), (14_200, 100_000), "boosted at start");
        assert_eq!(POLICY.limits(3584).unwrap().startup_cpu_quota_us(1000), 200_000, "never below its share");
        assert_eq!(l.startup_cpu_quota_us(0), 14_200, "no boost");
        let l = POLICY.limits(0).unwrap();
        assert_eq!((l.memory_mb, l.memory_bytes(), l.pids), (128, 128 << 20, 1024));
        assert_eq!((l.cpu_quota_us(), l.cpu_shares()), (10_000, 102));
    }

    #[test]
    fn memory_out_of_range_is_refused_with_the_range() {
        for bad in [1, 63, 32_769] {
            let e = POLICY.limits(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("memory_mb {bad}")) && e.contains("64 to 32768 MB"), "{e}");
        }
    }

    #[test]
    fn advice_follows_the_image_size_table() {
        const MB: u64 = 1 << 20;
        assert!(memory_advice(100 * MB, 256).is_none());
        assert!(memory_advice(100 * MB, 128).unwrap().contains("(256 to 512 MB)"));
        assert!(memory_advice(300 * MB, 256)
            .unwrap()
            .contains("image of 300 MB calls for (512 MB to 1 GiB)"));
        assert!(memory_advice(300 * MB, 512).is_none());
        assert!(memory_advice(700 * MB, 1024).unwrap().contains("(over 1 GiB)"));
        assert!(memory_advice(700 * MB, 1536).is_none());
    }
}

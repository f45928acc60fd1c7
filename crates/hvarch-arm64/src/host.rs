//! Host facts that only an aarch64 host can tell: its GIC version.
//!
//! On other hosts (and when the host cannot tell) the answer is `None` and callers use
//! [`GicVersion::DEFAULT`], as Kata does since runtime#2615.

/// An Arm Generic Interrupt Controller version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum GicVersion {
    /// GICv2: at most 8 vCPUs.
    V2,
    /// GICv3: 123 vCPUs (QEMU's redistributor space on `virt`).
    V3,
    /// GICv4: as GICv3.
    V4,
}

impl GicVersion {
    /// What Kata assumes when it does not look: GICv3.
    pub const DEFAULT: GicVersion = GicVersion::V3;

    /// The most vCPUs a `virt` guest can have with this GIC (Kata's `gicList`).
    pub fn max_vcpus(self) -> u32 {
        match self {
            GicVersion::V2 => 8,
            GicVersion::V3 | GicVersion::V4 => 123,
        }
    }

    /// Finds the GIC version in a line of `/proc/interrupts` (the irqchip column reads
    /// `GICv2`, `GICv3` or `GICv4`).
    pub fn from_interrupts_line(line: &str) -> Option<GicVersion> {
        if line.contains("GICv4") {
            Some(GicVersion::V4)
        } else if line.contains("GICv3") {
            Some(GicVersion::V3)
        } else if line.contains("GICv2") || line.contains("GIC-0") {
            Some(GicVersion::V2)
        } else {
            None
        }
    }
}

cfg_if::cfg_if! {
    if #[cfg(target_arch = "aarch64")] {
        /// The host's GIC version, read from `/proc/interrupts`. Reading stops at the first
        /// line that names a GIC, so the cost does not grow with the host's size (Kata
        /// stopped parsing the whole file because it is ~1 MB on 224-CPU hosts).
        pub fn host_gic_version() -> Option<GicVersion> {
            use std::io::{BufRead, BufReader};
            let file = std::fs::File::open("/proc/interrupts").ok()?;
            BufReader::new(file)
                .lines()
                .map_while(std::result::Result::ok)
                .take(64)
                .find_map(|line| GicVersion::from_interrupts_line(&line))
        }
    } else {
        /// The host's GIC version: not knowable on a non-Arm host, so `None`.
        pub fn host_gic_version() -> Option<GicVersion> {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gic_table() {
        assert_eq!(GicVersion::V2.max_vcpus(), 8);
        assert_eq!(GicVersion::V3.max_vcpus(), 123);
        assert_eq!(GicVersion::V4.max_vcpus(), 123);
        assert_eq!(GicVersion::DEFAULT.max_vcpus(), 123);
    }

    #[test]
    fn parses_interrupt_lines() {
        assert_eq!(
            GicVersion::from_interrupts_line(" 11:   1  2  GICv3  27 Level     arch_timer"),
            Some(GicVersion::V3)
        );
        assert_eq!(
            GicVersion::from_interrupts_line(" 3:  0  GICv2  30 Level  arch_timer"),
            Some(GicVersion::V2)
        );
        assert_eq!(
            GicVersion::from_interrupts_line("           CPU0       CPU1"),
            None
        );
    }

    #[test]
    fn host_probe_matches_the_host() {
        let probed = host_gic_version();
        if cfg!(not(target_arch = "aarch64")) {
            assert_eq!(probed, None);
        }
    }
}

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

    /// The version a `gic-version=` machine option asks for: `2`, `3` or `4`; `None` for
    /// `host` and `max` (QEMU decides) and anything else.
    pub fn from_machine_option(value: &str) -> Option<GicVersion> {
        match value {
            "2" => Some(GicVersion::V2),
            "3" => Some(GicVersion::V3),
            "4" => Some(GicVersion::V4),
            _ => None,
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

/// How many lines of `/proc/interrupts` are read at most: the per-CPU timer and IPI lines,
/// which name the GIC, come first.
pub const INTERRUPTS_LINES_READ: usize = 64;

/// The GIC version named in `/proc/interrupts` text read from `reader`. Reading stops at the
/// first line that names a GIC, or after [`INTERRUPTS_LINES_READ`] lines, so the cost does
/// not grow with the host's size (Kata stopped parsing the whole file because it is ~1 MB on
/// 224-CPU hosts).
pub fn gic_version_in(reader: impl std::io::BufRead) -> Option<GicVersion> {
    reader
        .lines()
        .map_while(std::result::Result::ok)
        .take(INTERRUPTS_LINES_READ)
        .find_map(|line| GicVersion::from_interrupts_line(&line))
}

cfg_if::cfg_if! {
    if #[cfg(target_arch = "aarch64")] {
        /// The host's GIC version, read from `/proc/interrupts` ([`gic_version_in`]).
        pub fn host_gic_version() -> Option<GicVersion> {
            let file = std::fs::File::open("/proc/interrupts").ok()?;
            gic_version_in(std::io::BufReader::new(file))
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
    fn machine_option_values() {
        assert_eq!(GicVersion::from_machine_option("2"), Some(GicVersion::V2));
        assert_eq!(GicVersion::from_machine_option("3"), Some(GicVersion::V3));
        assert_eq!(GicVersion::from_machine_option("4"), Some(GicVersion::V4));
        for qemu_decides in ["host", "max", "", "5"] {
            assert_eq!(GicVersion::from_machine_option(qemu_decides), None);
        }
    }

    #[test]
    fn reads_at_most_the_first_lines() {
        let cpus = "           CPU0       CPU1\n";
        let timer = " 11:   1  2  GICv3  27 Level     arch_timer\n";
        let filler = " 99:   0  0  ITS-MSI 1 Edge      virtio0\n".repeat(INTERRUPTS_LINES_READ);
        let first = format!("{cpus}{timer}{filler}");
        assert_eq!(gic_version_in(first.as_bytes()), Some(GicVersion::V3));
        let too_late = format!("{cpus}{filler}{timer}");
        assert_eq!(gic_version_in(too_late.as_bytes()), None);
        assert_eq!(gic_version_in(&b""[..]), None);
    }

    /// What `/proc/interrupts` says, read here independently of the probe: the first GIC
    /// version named in its first lines. On aarch64 under qemu-user the file is the x86
    /// host's, which names no GIC: the probe must then find none either.
    fn named_in_proc_interrupts() -> Option<GicVersion> {
        let text = std::fs::read_to_string("/proc/interrupts").unwrap_or_default();
        let names = [
            ("GICv4", GicVersion::V4),
            ("GICv3", GicVersion::V3),
            ("GICv2", GicVersion::V2),
            ("GIC-0", GicVersion::V2),
        ];
        text.lines().take(INTERRUPTS_LINES_READ).find_map(|line| {
            names
                .iter()
                .find(|(name, _)| line.contains(name))
                .map(|(_, version)| *version)
        })
    }

    #[test]
    fn host_probe_matches_the_host() {
        let expected = if cfg!(target_arch = "aarch64") {
            named_in_proc_interrupts()
        } else {
            // Not an Arm host: nothing to probe.
            None
        };
        assert_eq!(host_gic_version(), expected);
    }
}

//! Host facts the assembly needs: total memory (for `maxmem`), the CPU count (for the vCPU
//! ceiling) and whether the host is itself a VM (for Kata's nesting rule). Each can be given
//! in the spec instead (`host_memory_mb`, `host_cpus`, `host_nested`), which keeps command
//! lines reproducible across hosts.

use std::path::Path;

use crate::error::{Error, Result};

/// Where Linux reports memory.
pub const MEMINFO: &str = "/proc/meminfo";
/// Where Linux describes the CPUs.
pub const CPUINFO: &str = "/proc/cpuinfo";

/// The host's total memory in MiB, from `MemTotal` in `/proc/meminfo` (Kata's
/// `getHostMemorySizeKb` / 1024).
pub fn host_memory_mb() -> Result<u64> {
    host_memory_mb_from(Path::new(MEMINFO))
}

/// [`host_memory_mb`] from another file in `/proc/meminfo` format.
pub fn host_memory_mb_from(path: &Path) -> Result<u64> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::HostMemory {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    parse_mem_total_mb(&text).ok_or_else(|| Error::HostMemory {
        path: path.to_path_buf(),
        reason: "no non-zero `MemTotal: <n> kB` line".into(),
    })
}

/// The `MemTotal` of `/proc/meminfo` text, in MiB; `None` if absent, malformed or zero.
pub fn parse_mem_total_mb(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut words = line["MemTotal:".len()..].split_whitespace();
    let kb: u64 = words.next()?.parse().ok()?;
    if words.next() != Some("kB") {
        return None;
    }
    let mb = kb / 1024;
    (mb > 0).then_some(mb)
}

/// The number of CPUs this process may run on (at least 1).
pub fn host_cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(1)
}

/// Whether `/proc/cpuinfo` text says the CPUs are virtual: a `flags` line holding the
/// `hypervisor` flag (x86's CPUID bit 31 of ECX, which hypervisors set). Kata's
/// `RunningOnVMM` on x86; other architectures' `/proc/cpuinfo` has no such flag.
///
/// ```
/// use hvarch::host::cpuinfo_says_vm;
/// assert!(cpuinfo_says_vm("processor\t: 0\nflags\t\t: fpu vme hypervisor lahf_lm\n"));
/// assert!(!cpuinfo_says_vm("processor\t: 0\nflags\t\t: fpu vme lahf_lm\n"));
/// ```
pub fn cpuinfo_says_vm(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim_end() == "flags")
        .any(|(_, flags)| flags.split_whitespace().any(|flag| flag == "hypervisor"))
}

cfg_if::cfg_if! {
    if #[cfg(target_arch = "x86_64")] {
        /// Whether this host is itself a VM (Kata's `RunningOnVMM`): the `hypervisor` flag in
        /// `/proc/cpuinfo` ([`cpuinfo_says_vm`]).
        pub fn running_on_vmm() -> Result<bool> {
            running_on_vmm_from(Path::new(CPUINFO))
        }
    } else {
        /// Whether this host is itself a VM (Kata's `RunningOnVMM`): not knowable on this
        /// architecture, so `false`, as in Kata ("Unable to know if the system is running
        /// inside a VM").
        pub fn running_on_vmm() -> Result<bool> {
            tracing::debug!(host = std::env::consts::ARCH, "cannot tell whether the host is a VM; assuming not");
            Ok(false)
        }
    }
}

/// [`cpuinfo_says_vm`] of another file in `/proc/cpuinfo` format.
pub fn running_on_vmm_from(path: &Path) -> Result<bool> {
    std::fs::read_to_string(path)
        .map(|text| cpuinfo_says_vm(&text))
        .map_err(|e| Error::HostCpuInfo {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mem_total() {
        let text = "MemTotal:       24683520 kB\nMemFree:        21098880 kB\n";
        assert_eq!(parse_mem_total_mb(text), Some(24105));
        assert_eq!(parse_mem_total_mb("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total_mb("MemTotal: 1023 kB\n"), None);
        assert_eq!(parse_mem_total_mb("MemTotal: lots kB\n"), None);
        assert_eq!(parse_mem_total_mb("MemTotal: 2048\n"), None);
    }

    #[test]
    fn the_hypervisor_flag_says_vm() {
        let flags = |list: &str| {
            format!("processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: {list}\nbugs\t\t: spectre_v1\n")
        };
        assert!(cpuinfo_says_vm(&flags("fpu vme de hypervisor lahf_lm")));
        assert!(cpuinfo_says_vm(&flags("hypervisor")));
        assert!(!cpuinfo_says_vm(&flags("fpu vme de lahf_lm")));
        // Only the flags line counts, and only the whole word.
        assert!(!cpuinfo_says_vm(&flags("fpu x-hypervisor hypervisors")));
        assert!(!cpuinfo_says_vm(
            "model name\t: hypervisor-grade CPU\nflags\t\t: fpu\n"
        ));
        // arm64 says `Features`, s390x `features`: never a VM by this rule (Kata's).
        assert!(!cpuinfo_says_vm(
            "processor\t: 0\nFeatures\t: fp asimd hypervisor\n"
        ));
        assert!(!cpuinfo_says_vm(""));
        let err = running_on_vmm_from(Path::new("/nonexistent/cpuinfo")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/cpuinfo"), "{err}");
        assert!(err.to_string().contains("host_nested"), "{err}");
    }

    /// The host reader agrees with what this host's `/proc/cpuinfo` says, read here
    /// independently (and is `false` off x86_64, as in Kata).
    #[test]
    fn running_on_vmm_reads_this_host() {
        let text = std::fs::read_to_string(CPUINFO).unwrap_or_default();
        let expected = cfg!(target_arch = "x86_64")
            && text
                .lines()
                .any(|l| l.starts_with("flags") && l.split_whitespace().any(|w| w == "hypervisor"));
        assert_eq!(
            running_on_vmm().expect("this host's /proc/cpuinfo"),
            expected
        );
    }

    #[test]
    fn reads_this_host_and_reports_bad_files() {
        assert!(host_memory_mb().expect("this host's /proc/meminfo") > 0);
        let err = host_memory_mb_from(Path::new("/nonexistent/meminfo")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/meminfo"), "{err}");
        assert!(host_cpus() >= 1);
    }
}

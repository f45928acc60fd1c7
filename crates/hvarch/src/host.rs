//! Host facts the assembly needs: total memory (for `maxmem`) and the CPU count (for the
//! vCPU ceiling). Both can be given in the spec instead, which keeps command lines
//! reproducible across hosts.

use std::path::Path;

use crate::error::{Error, Result};

/// Where Linux reports memory.
pub const MEMINFO: &str = "/proc/meminfo";

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
    fn reads_this_host_and_reports_bad_files() {
        assert!(host_memory_mb().expect("this host's /proc/meminfo") > 0);
        let err = host_memory_mb_from(Path::new("/nonexistent/meminfo")).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/meminfo"), "{err}");
        assert!(host_cpus() >= 1);
    }
}

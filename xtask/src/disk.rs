//! Disk space for `cargo xtask ci`: a run from an empty `target/` writes several gigabytes
//! (the workspace's tests built for the host and for three cross targets), and a full disk
//! shows up as a linker's "No space left on device" deep in a cross stage. `ci` says up front
//! when the space looks short, and every stage's summary line shows what is left.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// What a `cargo xtask ci` run from an empty `target/` leaves there, with a margin: 5.1 GiB
/// measured on 2026-11-29 (host tests, clippy, package, docs, the three cross targets' tests,
/// the arm64 guest, virtiofsd and the cross sysroots).
pub const CI_NEEDS: u64 = 6 << 30;

/// Bytes available to an unprivileged writer on the filesystem holding `path`.
pub fn available(path: &Path) -> Result<u64, String> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{} contains a NUL byte", path.display()))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string and `stat` is a valid out-pointer.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(format!(
            "statvfs {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: statvfs returned 0, so it filled `stat`.
    let stat = unsafe { stat.assume_init() };
    // fsblkcnt_t and c_ulong are u64 here but narrower on 32-bit targets.
    #[allow(clippy::useless_conversion)]
    Ok(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

/// `bytes` in GiB with one decimal, for people.
pub fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / f64::from(1u32 << 30))
}

/// The warning `ci` prints before its first stage when `available` bytes are fewer than a run
/// from an empty `target/` needs (`needs`); `None` when there is room. Only a warning: a
/// `target/` that is already built needs much less.
pub fn shortage(available: u64, needs: u64) -> Option<String> {
    (available < needs).then(|| {
        format!(
            "only {} free for target/; a `cargo xtask ci` run from an empty target/ writes about \
             {} there, so a stage may fail with \"No space left on device\"",
            gib(available),
            gib(needs)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shortage_is_named_with_both_sizes() {
        assert_eq!(shortage(CI_NEEDS, CI_NEEDS), None);
        assert_eq!(shortage(u64::MAX, CI_NEEDS), None);
        let warning = shortage(287 << 20, CI_NEEDS).unwrap();
        assert!(warning.starts_with("only 0.3 GiB free"), "{warning}");
        assert!(
            warning.contains(&format!("about {}", gib(CI_NEEDS))),
            "{warning}"
        );
        assert!(shortage(0, 1).is_some());
    }

    #[test]
    fn the_workspace_filesystem_reports_space_and_a_bad_path_an_error() {
        assert!(available(Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap() > 0);
        let err = available(Path::new("/no/such/dir/for/xtask")).unwrap_err();
        assert!(err.starts_with("statvfs /no/such/dir/for/xtask: "), "{err}");
    }

    #[test]
    fn gib_rounds_to_one_decimal() {
        assert_eq!(gib(0), "0.0 GiB");
        assert_eq!(gib(3 << 29), "1.5 GiB");
        assert_eq!(gib(8 << 30), "8.0 GiB");
    }
}

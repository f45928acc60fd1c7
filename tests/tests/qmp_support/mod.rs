//! What the blocking and async real-QEMU QMP suites share: their configuration, and the files
//! whose descriptors they pass concurrently and check inside QEMU.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::time::Duration;

use hvarch_qmp::{AddFdInfo, Config};
use hvarch_tests::QemuProcess;

/// The suites' client configuration, with `oob` asked for or not.
pub fn config(enable_oob: bool) -> Config {
    Config {
        command_timeout: Duration::from_secs(10),
        enable_oob,
        ..Config::default()
    }
}

/// Commands in flight at once in the concurrency checks: more than QEMU queues (8).
pub const CONCURRENT: usize = 16;

/// Files whose descriptors are passed to QEMU at once.
pub struct PassedFiles {
    files: Vec<(PathBuf, File)>,
}

impl PassedFiles {
    /// Eight files in the VM's directory.
    pub fn new(vm: &QemuProcess) -> PassedFiles {
        let files = (0..8)
            .map(|i| {
                let path = vm.dir().join(&format!("passed-{i}"));
                std::fs::write(&path, b"").expect("create file");
                let path = std::fs::canonicalize(&path).expect("canonical path");
                let file = File::open(&path).expect("open file");
                (path, file)
            })
            .collect();
        PassedFiles { files }
    }

    /// Each file's `opaque` (its path) and descriptor, for `add_fd`.
    pub fn each(&self) -> impl Iterator<Item = (&str, BorrowedFd<'_>)> {
        self.files
            .iter()
            .map(|(path, file)| (path.to_str().expect("UTF-8 path"), file.as_fd()))
    }

    /// Asserts that the descriptor QEMU holds for each `add-fd` (in the order of
    /// [`PassedFiles::each`]) is that call's file: none was taken for another's.
    pub fn assert_reached_qemu(&self, vm: &QemuProcess, infos: &[AddFdInfo]) {
        assert_eq!(infos.len(), self.files.len());
        for ((path, _), info) in self.files.iter().zip(infos) {
            let link = format!("/proc/{}/fd/{}", vm.pid(), info.fd);
            let target = std::fs::read_link(&link).expect("QEMU holds the passed fd");
            assert_eq!(&target, path, "fd set {} holds another file", info.fdset_id);
        }
    }
}

/// Round trips in the sleep-count checks.
pub const SLEEP_ROUND_TRIPS: i64 = 200;

/// Asserts that the calling thread went to sleep about once per round trip over
/// [`SLEEP_ROUND_TRIPS`] (sleep counts `before` and `after`, from
/// `hvarch_qmp::testing::thread_sleeps`; nothing is checked where they are unknown). QEMU
/// consumes each command byte by byte while the caller waits: a wait that also wakes for that
/// (a blocking `recv`, a socket registered for writability) sleeps about 1.5 times per round
/// trip here.
pub fn assert_one_sleep_per_round_trip(before: Option<i64>, after: Option<i64>) {
    if let (Some(before), Some(after)) = (before, after) {
        let sleeps = after - before;
        assert!(
            sleeps < SLEEP_ROUND_TRIPS * 5 / 4,
            "{sleeps} sleeps in {SLEEP_ROUND_TRIPS} round trips with QEMU"
        );
    }
}

//! `cargo xtask cross [TARGET]`: the workspace built for another architecture and its tests run
//! under qemu-user.
//!
//! rustup cannot add targets here, so this uses Debian's `rustc-web` toolchain
//! (`/usr/bin/cargo`, `/usr/bin/rustc`, `/usr/bin/rustdoc`) in a target directory of its own so
//! the two compilers never share artifacts (the targets share it: their build scripts and
//! proc-macros are host code, built once). The target's standard library is the one
//! `cargo xtask setup` extracted into `target/cross/<triple>` (`--sysroot`, see
//! [`crate::setup`]); the GNU cross linker links against the cross C library, and qemu-user
//! loads the test binaries' dynamic loader and C library from that same cross C library
//! (`QEMU_LD_PREFIX=/usr/<gnu triple>`), so exactly one glibc build is ever involved.
//!
//! | target | runs | why |
//! |---|---|---|
//! | aarch64 | the libraries' tests that need no QEMU, and every test of the CLI | hvarch's second native host: the `hvarch` binary picks the arm64 backend there and drives real QEMU |
//! | ppc64le | the libraries' tests that need no QEMU | `hvarch::native` and the backends on their own host |
//! | s390x | the libraries' tests that need no QEMU | big-endian: the QMP codec, fd passing, argv rendering |
//!
//! Every target runs the libraries' unit tests (`--lib`) and the QMP client's and the hotplug
//! engine's tests against the fake QMP server; aarch64 adds the CLI's unit and integration
//! tests, which launch real QEMU through the aarch64 `hvarch` binary. The workspace's other
//! real-QEMU suites (`tests/`) run natively only: under qemu-user they exercised the same
//! host-independent code again, for half of the stage's time. Every target runs 32 cases per
//! property test (`PROPTEST_CASES`): the input spaces are covered natively, these runs prove
//! portability, and 256 emulated cases cost minutes. That keeps `cargo xtask ci` within its
//! time budget on two cores.

use crate::run::{workspace_root, Step};
use crate::setup;

/// What runs on a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// [`Scope::Libraries`], then every test of [`CLI`] (a second `cargo test`).
    LibrariesAndCli,
    /// The unit tests of [`LIBRARIES`] and the fake-QMP tests [`FAKE_QMP_TESTS`].
    Libraries,
}

/// The command-line crate whose tests [`Scope::LibrariesAndCli`] adds.
pub const CLI: &str = "hvarch-cli";

/// The libraries whose unit tests run on the targets of [`Scope::Libraries`].
pub const LIBRARIES: [&str; 8] = [
    "hvarch",
    "hvarch-amd64",
    "hvarch-arch",
    "hvarch-arm64",
    "hvarch-devices",
    "hvarch-ppc64le",
    "hvarch-qmp",
    "hvarch-s390x",
];

/// The integration tests of [`LIBRARIES`] that need no QEMU (a fake QMP server): the QMP
/// codec and clients with fd passing, and the hotplug engine's command sequences.
pub const FAKE_QMP_TESTS: [&str; 5] = [
    "codec_props",
    "commands_json",
    "fake_async",
    "fake_blocking",
    "hotplug_fake",
];

/// Property-test cases per test on every cross target (emulated, slow).
pub const CROSS_PROPTEST_CASES: &str = "32";

/// A target the test suite is cross-built for.
#[derive(Clone, Copy, Debug)]
pub struct CrossTarget {
    /// Its short name (`cargo xtask cross <name>`).
    pub name: &'static str,
    /// The Rust target triple.
    pub triple: &'static str,
    /// The GNU triple of the cross linker and C library (`/usr/<gnu>`, `<gnu>-gcc`).
    pub gnu: &'static str,
    /// The qemu-user binary that runs its programs.
    pub runner: &'static str,
    /// What runs there.
    pub scope: Scope,
}

/// aarch64: the libraries' tests and the CLI's.
pub const AARCH64: CrossTarget = CrossTarget {
    name: "aarch64",
    triple: "aarch64-unknown-linux-gnu",
    gnu: "aarch64-linux-gnu",
    runner: "qemu-aarch64",
    scope: Scope::LibrariesAndCli,
};

/// ppc64le: the libraries' unit tests.
pub const PPC64LE: CrossTarget = CrossTarget {
    name: "ppc64le",
    triple: "powerpc64le-unknown-linux-gnu",
    gnu: "powerpc64le-linux-gnu",
    runner: "qemu-ppc64le",
    scope: Scope::Libraries,
};

/// s390x (big-endian): the libraries' unit tests.
pub const S390X: CrossTarget = CrossTarget {
    name: "s390x",
    triple: "s390x-unknown-linux-gnu",
    gnu: "s390x-linux-gnu",
    runner: "qemu-s390x",
    scope: Scope::Libraries,
};

/// Every cross target, in the order `cargo xtask ci` runs them.
pub const TARGETS: [CrossTarget; 3] = [AARCH64, PPC64LE, S390X];

impl CrossTarget {
    /// The target called `name` (its short name or its triple).
    pub fn find(name: &str) -> Result<CrossTarget, String> {
        TARGETS
            .iter()
            .find(|t| t.name == name || t.triple == name)
            .copied()
            .ok_or_else(|| {
                let known: Vec<&str> = TARGETS.iter().map(|t| t.name).collect();
                format!(
                    "unknown cross target {name:?} (known: {})",
                    known.join(", ")
                )
            })
    }

    /// What `cargo xtask ci` calls this target's stage.
    pub fn stage_name(&self) -> String {
        match self.scope {
            Scope::LibrariesAndCli => {
                format!(
                    "cross ({} library and CLI tests under qemu-user)",
                    self.name
                )
            }
            Scope::Libraries => format!("cross ({} library tests under qemu-user)", self.name),
        }
    }

    /// The `cargo test` runs, each by its arguments besides the target: what [`Scope`] runs.
    pub fn cargo_runs(&self) -> Vec<Vec<&'static str>> {
        let mut libraries = vec!["--lib"];
        for library in LIBRARIES {
            libraries.extend(["-p", library]);
        }
        for test in FAKE_QMP_TESTS {
            libraries.extend(["--test", test]);
        }
        libraries.push("--all-features");
        match self.scope {
            Scope::Libraries => vec![libraries],
            Scope::LibrariesAndCli => vec![libraries, vec!["-p", CLI, "--all-features"]],
        }
    }

    /// Builds this target's tests and runs them under qemu-user; every run goes, even after
    /// one failed, and the error names each that failed.
    pub fn run(&self) -> Result<(), String> {
        let failed: Vec<String> = self
            .cargo_runs()
            .iter()
            .filter_map(|args| run_target(self, args).err())
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed.join("; "))
        }
    }
}

/// Builds and tests the workspace for `target`.
pub fn run_target(target: &CrossTarget, cargo_args: &[&str]) -> Result<(), String> {
    let sysroot = setup::cross_sysroot(&setup::dirs().cross.join(target.triple));
    if !sysroot.join("lib/rustlib").join(target.triple).is_dir() {
        return Err(format!(
            "no standard library for {} under {}: run `cargo xtask setup`",
            target.triple,
            sysroot.display()
        ));
    }
    let env_key = target.triple.to_uppercase().replace('-', "_");
    let target_dir = workspace_root().join("target").join("debian-cross");
    let mut args = vec!["test", "--target", target.triple, "--no-fail-fast"];
    args.extend_from_slice(cargo_args);
    Step::new("/usr/bin/cargo", &args)
        .env("PROPTEST_CASES", CROSS_PROPTEST_CASES)
        .current_dir(workspace_root())
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTDOC", "/usr/bin/rustdoc")
        .env("CARGO_TARGET_DIR", &target_dir)
        .env(
            format!("CARGO_TARGET_{env_key}_LINKER"),
            format!("{}-gcc", target.gnu),
        )
        .env(format!("CARGO_TARGET_{env_key}_RUNNER"), target.runner)
        .env(
            format!("CARGO_TARGET_{env_key}_RUSTFLAGS"),
            format!("--sysroot={}", sysroot.display()),
        )
        .env("QEMU_LD_PREFIX", format!("/usr/{}", target.gnu))
        // Tests that start a built binary of ours (the CLI) start it through the same runner.
        .env("HVARCH_TEST_RUNNER", target.runner)
        .run()
}

/// `cargo xtask cross [TARGET]`: `target` (a short name or a triple), else every target.
pub fn run(target: Option<&str>) -> Result<(), String> {
    match target {
        Some(name) => CrossTarget::find(name)?.run(),
        None => TARGETS.iter().try_for_each(CrossTarget::run),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_by_name_or_triple() {
        assert_eq!(CrossTarget::find("s390x").unwrap().runner, "qemu-s390x");
        assert_eq!(
            CrossTarget::find("powerpc64le-unknown-linux-gnu")
                .unwrap()
                .name,
            "ppc64le"
        );
        let err = CrossTarget::find("riscv64").unwrap_err();
        assert!(err.contains("aarch64, ppc64le, s390x"), "{err}");
        // setup prepares a sysroot for each of them.
        for target in TARGETS {
            assert!(
                setup::plan::CROSS_TARGETS
                    .iter()
                    .any(|t| t.triple == target.triple),
                "{}",
                target.triple
            );
        }
    }

    /// Every named test is an integration test of one of the libraries (cargo would refuse a
    /// missing one only at run time, on the cross machine).
    #[test]
    fn fake_qmp_tests_exist_in_the_libraries() {
        let crates = workspace_root().join("crates");
        for test in FAKE_QMP_TESTS {
            let owners: Vec<&str> = LIBRARIES
                .iter()
                .copied()
                .filter(|lib| {
                    crates
                        .join(lib)
                        .join("tests")
                        .join(format!("{test}.rs"))
                        .is_file()
                })
                .collect();
            assert_eq!(owners.len(), 1, "{test}: {owners:?}");
        }
    }

    #[test]
    fn every_target_runs_the_library_tests_and_aarch64_the_cli_too() {
        for target in TARGETS {
            let runs = target.cargo_runs();
            let libraries = &runs[0];
            assert_eq!(libraries[0], "--lib", "{}", target.name);
            assert!(!libraries.contains(&"--workspace"));
            for library in ["hvarch", "hvarch-qmp", "hvarch-devices", "hvarch-s390x"] {
                assert!(
                    libraries.windows(2).any(|w| w == ["-p", library]),
                    "{library}"
                );
            }
            assert!(libraries
                .windows(2)
                .any(|w| w == ["--test", "fake_blocking"]));
            assert!(!libraries.contains(&CLI), "{}", target.name);
            assert!(runs.iter().all(|run| run.last() == Some(&"--all-features")));
        }
        assert_eq!(PPC64LE.cargo_runs().len(), 1);
        assert_eq!(S390X.cargo_runs().len(), 1);
        assert_eq!(AARCH64.cargo_runs()[1], ["-p", CLI, "--all-features"]);
        assert_eq!(
            S390X.stage_name(),
            "cross (s390x library tests under qemu-user)"
        );
        assert_eq!(
            AARCH64.stage_name(),
            "cross (aarch64 library and CLI tests under qemu-user)"
        );
    }

    /// The CLI's tests are its crate's own (a test binary of another crate would not run).
    #[test]
    fn the_cli_is_a_workspace_crate_with_integration_tests() {
        let crate_dir = workspace_root().join("crates").join(CLI);
        assert!(crate_dir.join("Cargo.toml").is_file());
        assert!(crate_dir.join("tests/run.rs").is_file());
    }
}

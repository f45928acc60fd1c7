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
//! | aarch64 | every library's unit tests, their fake-QMP tests, and every test of the CLI | hvarch's second native host: the `hvarch` binary picks the arm64 backend there and drives real QEMU |
//! | ppc64le | the architecture crates' and the QMP client's unit tests, the QMP client's fake-QMP tests, `hvarch::native` | the backends and the QMP client on their own host |
//! | s390x | the same, and the device model's unit tests | big-endian: the QMP codec, fd passing, argv and id rendering |
//!
//! What each target runs is what it can break that the others cannot: the facade's unit tests
//! and the hotplug engine's fake-QMP tests (host-independent logic) run natively and on
//! aarch64; the device model's (string rendering) natively, on aarch64 and on the big-endian
//! s390x. The workspace's real-QEMU suites (`tests/`) run natively only: under qemu-user they
//! exercised the same host-independent code again, for half of the stage's time. Every target
//! runs 32 cases per property test (`PROPTEST_CASES`): the input spaces are covered natively,
//! these runs prove portability, and 256 emulated cases cost minutes. Cross builds carry no
//! debug info (a failing test still names its file and line). That keeps `cargo xtask ci`
//! within its time budget on two cores.

use crate::run::{workspace_root, Step};
use crate::setup;

/// One `cargo test` on a cross target: which packages, and which of their tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CargoRun {
    /// The packages (`-p`).
    pub packages: &'static [&'static str],
    /// Their tests.
    pub tests: Tests,
}

/// The tests a [`CargoRun`] builds and runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tests {
    /// Every test target cargo builds by default (doc tests excepted: they do not cross-run).
    All,
    /// The packages' unit tests (`--lib`) when `unit`, and the integration tests named
    /// (each belongs to one of the packages).
    Only {
        /// Whether the packages' unit tests run.
        unit: bool,
        /// Integration tests, by name (`--test`).
        integration: &'static [&'static str],
    },
}

impl CargoRun {
    /// Its `cargo test` arguments besides the target.
    pub fn args(&self) -> Vec<&'static str> {
        let mut args = Vec::new();
        if let Tests::Only { unit: true, .. } = self.tests {
            args.push("--lib");
        }
        for package in self.packages {
            args.extend(["-p", package]);
        }
        if let Tests::Only { integration, .. } = self.tests {
            for test in integration {
                args.extend(["--test", test]);
            }
        }
        args.push("--all-features");
        args
    }
}

/// The command-line crate, whose tests aarch64 runs.
pub const CLI: &str = "hvarch-cli";

/// The facade, whose [`NATIVE_TEST`] every target runs.
pub const FACADE: &str = "hvarch";

/// The published libraries.
pub const LIBRARIES: [&str; 8] = [
    FACADE,
    "hvarch-amd64",
    "hvarch-arch",
    "hvarch-arm64",
    "hvarch-devices",
    "hvarch-ppc64le",
    "hvarch-qmp",
    "hvarch-s390x",
];

/// The architecture crates (the trait and base, the four backends) and the QMP client:
/// what the ppc64le and s390x targets run the unit tests of.
pub const BACKENDS_AND_QMP: [&str; 6] = [
    "hvarch-amd64",
    "hvarch-arch",
    "hvarch-arm64",
    "hvarch-ppc64le",
    "hvarch-qmp",
    "hvarch-s390x",
];

/// The QMP client's integration tests that need no QEMU (a fake QMP server): the codec, the
/// commands' JSON, and both clients with fd passing.
pub const QMP_FAKE_TESTS: [&str; 4] = [
    "codec_props",
    "commands_json",
    "fake_async",
    "fake_blocking",
];

/// The facade's integration test of `hvarch::native` against the running machine.
pub const NATIVE_TEST: &str = "native_host";

/// The unit tests of `packages` and the QMP client's fake-QMP tests.
const fn units_and_qmp_fakes(packages: &'static [&'static str]) -> CargoRun {
    CargoRun {
        packages,
        tests: Tests::Only {
            unit: true,
            integration: &QMP_FAKE_TESTS,
        },
    }
}

/// The facade's integration tests of `tests`, without its unit tests (`--lib` would add them).
const fn facade_tests(tests: &'static [&'static str]) -> CargoRun {
    CargoRun {
        packages: &[FACADE],
        tests: Tests::Only {
            unit: false,
            integration: tests,
        },
    }
}

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
    /// What runs there, in a few words (the stage's name).
    pub summary: &'static str,
    /// What runs there: one `cargo test` each, in order.
    pub runs: &'static [CargoRun],
}

/// aarch64: every library's unit and fake-QMP tests, and the CLI's tests.
pub const AARCH64: CrossTarget = CrossTarget {
    name: "aarch64",
    triple: "aarch64-unknown-linux-gnu",
    gnu: "aarch64-linux-gnu",
    runner: "qemu-aarch64",
    summary: "library and CLI tests",
    runs: &[
        units_and_qmp_fakes(&LIBRARIES),
        // The hotplug engine's command sequences against a fake QMP server.
        facade_tests(&["hotplug_fake", NATIVE_TEST]),
        CargoRun {
            packages: &[CLI],
            tests: Tests::All,
        },
    ],
};

/// ppc64le: the backends' and the QMP client's tests, and `hvarch::native`.
pub const PPC64LE: CrossTarget = CrossTarget {
    name: "ppc64le",
    triple: "powerpc64le-unknown-linux-gnu",
    gnu: "powerpc64le-linux-gnu",
    runner: "qemu-ppc64le",
    summary: "backend and QMP tests",
    runs: &[
        units_and_qmp_fakes(&BACKENDS_AND_QMP),
        facade_tests(&[NATIVE_TEST]),
    ],
};

/// s390x (big-endian): the backends', the QMP client's and the device model's tests, and
/// `hvarch::native`.
pub const S390X: CrossTarget = CrossTarget {
    name: "s390x",
    triple: "s390x-unknown-linux-gnu",
    gnu: "s390x-linux-gnu",
    runner: "qemu-s390x",
    summary: "backend, QMP and device tests",
    runs: &[
        units_and_qmp_fakes(&BACKENDS_AND_QMP),
        CargoRun {
            packages: &["hvarch-devices"],
            tests: Tests::Only {
                unit: true,
                integration: &[],
            },
        },
        facade_tests(&[NATIVE_TEST]),
    ],
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
        format!("cross ({} {} under qemu-user)", self.name, self.summary)
    }

    /// Builds this target's tests and runs them under qemu-user; every run goes, even after
    /// one failed, and the error names each that failed.
    pub fn run(&self) -> Result<(), String> {
        let failed: Vec<String> = self
            .runs
            .iter()
            .filter_map(|run| run_target(self, &run.args()).err())
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
        // No debug info: 10 % of the build, and only backtraces would use it.
        .env("CARGO_PROFILE_DEV_DEBUG", "false")
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

    /// Every named integration test belongs to exactly one of its run's packages (cargo would
    /// refuse a missing one only at run time, on the cross machine), and every package is a
    /// crate of the workspace.
    #[test]
    fn every_run_names_workspace_crates_and_their_tests() {
        let crates = workspace_root().join("crates");
        for target in TARGETS {
            for run in target.runs {
                for package in run.packages {
                    assert!(
                        crates.join(package).join("Cargo.toml").is_file(),
                        "{}: {package}",
                        target.name
                    );
                }
                let Tests::Only { integration, .. } = run.tests else {
                    continue;
                };
                for test in integration {
                    let owners: Vec<&str> = run
                        .packages
                        .iter()
                        .copied()
                        .filter(|package| {
                            crates
                                .join(package)
                                .join("tests")
                                .join(format!("{test}.rs"))
                                .is_file()
                        })
                        .collect();
                    assert_eq!(owners.len(), 1, "{}: {test}: {owners:?}", target.name);
                }
            }
        }
    }

    /// The packages whose unit tests `target` runs.
    fn unit_tested(target: &CrossTarget) -> Vec<&'static str> {
        let runs = target.runs.iter();
        runs.filter(|run| matches!(run.tests, Tests::Only { unit: true, .. }))
            .flat_map(|run| run.packages.iter().copied())
            .collect()
    }

    /// The integration tests `target` runs (besides those of [`Tests::All`] runs).
    fn integration_tested(target: &CrossTarget) -> Vec<&'static str> {
        let runs = target.runs.iter();
        runs.flat_map(|run| match run.tests {
            Tests::Only { integration, .. } => integration.to_vec(),
            Tests::All => Vec::new(),
        })
        .collect()
    }

    #[test]
    fn args_select_unit_tests_packages_and_integration_tests() {
        let run = units_and_qmp_fakes(&["hvarch-qmp", "hvarch-arch"]);
        assert_eq!(
            run.args(),
            [
                "--lib",
                "-p",
                "hvarch-qmp",
                "-p",
                "hvarch-arch",
                "--test",
                "codec_props",
                "--test",
                "commands_json",
                "--test",
                "fake_async",
                "--test",
                "fake_blocking",
                "--all-features"
            ]
        );
        // Without `--lib`, which would build the facade's unit tests too.
        assert_eq!(
            facade_tests(&[NATIVE_TEST]).args(),
            ["-p", FACADE, "--test", NATIVE_TEST, "--all-features"]
        );
    }

    #[test]
    fn aarch64_runs_every_library_and_the_cli() {
        let units = unit_tested(&AARCH64);
        for library in LIBRARIES {
            assert!(units.contains(&library), "{library}");
        }
        let integration = integration_tested(&AARCH64);
        for test in ["hotplug_fake", "fake_blocking", NATIVE_TEST] {
            assert!(integration.contains(&test), "{test}");
        }
        let cli = CargoRun {
            packages: &[CLI],
            tests: Tests::All,
        };
        assert!(AARCH64.runs.contains(&cli));
        assert_eq!(
            AARCH64.stage_name(),
            "cross (aarch64 library and CLI tests under qemu-user)"
        );
    }

    #[test]
    fn ppc64le_and_s390x_run_the_backends_qmp_and_native() {
        for target in [PPC64LE, S390X] {
            let units = unit_tested(&target);
            for package in BACKENDS_AND_QMP {
                assert!(units.contains(&package), "{}: {package}", target.name);
            }
            // The facade's unit tests and the hotplug engine's fake-QMP tests are
            // host-independent: aarch64 and x86_64 run them.
            assert!(!units.contains(&FACADE), "{}", target.name);
            let integration = integration_tested(&target);
            assert!(integration.contains(&"fake_blocking"), "{}", target.name);
            assert!(integration.contains(&NATIVE_TEST), "{}", target.name);
            assert!(!integration.contains(&"hotplug_fake"), "{}", target.name);
            assert!(!target.runs.iter().any(|run| run.tests == Tests::All));
        }
        // Rendering is where byte order could show: the big-endian target runs the devices.
        assert!(unit_tested(&S390X).contains(&"hvarch-devices"));
        assert!(!unit_tested(&PPC64LE).contains(&"hvarch-devices"));
        assert_eq!(
            S390X.stage_name(),
            "cross (s390x backend, QMP and device tests under qemu-user)"
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

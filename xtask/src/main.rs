//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! * `cargo xtask setup [--profile demo|ci] [--dry-run]` installs what the demo or the tests need
//!   on a Debian bookworm machine (a tested plan; idempotent).
//! * `cargo xtask ci` runs every CI stage in order and stops at the first failure.
//! * `cargo xtask demo` boots a real arm64 guest, hot-plugs a disk and memory, prints timings.
//! * `cargo xtask examples` runs the minimal VMM examples against the arm64 test guest.
//! * `cargo xtask cross [TARGET]` builds for aarch64, ppc64le and s390x (or one of them) with
//!   Debian's toolchain and runs the tests under qemu-user.

mod bench;
mod cross;
mod demo;
mod disk;
mod examples;
mod run;
mod setup;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};

use crate::run::cargo;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "hvarch project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what the demo or the tests need (Debian bookworm; idempotent): QEMU 10, UEFI
    /// firmware and the arm64 guest for `demo`; also the cross toolchains, qemu-user and
    /// virtiofsd for `ci`.
    Setup {
        /// What to prepare the machine for.
        #[arg(long, value_enum, default_value = "ci")]
        profile: setup::Profile,
        /// Print the plan and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run every CI stage: setup, fmt, clippy, tests, examples, package, docs, cross tests
    /// (aarch64, ppc64le, s390x).
    Ci,
    /// Boot a real arm64 guest (TCG, UEFI), hot-plug a disk and memory, watch the guest see
    /// them, unplug, power off, and print the timings. Runs `setup` first if QEMU is missing.
    Demo,
    /// Build for another architecture with Debian's toolchain and run its tests under
    /// qemu-user: on each, what it can break that the others cannot (see `xtask/src/cross.rs`).
    Cross {
        /// aarch64, ppc64le or s390x (or a target triple); all three when omitted.
        target: Option<String>,
    },
    /// Run the minimal VMM examples (blocking and tokio) against the arm64 test guest.
    Examples,
    /// Benchmarks against peers, measured in one run and reported as ratios
    /// (`target/bench/report.md`, `report.svg`).
    Bench {
        /// Which benchmark: launch, qmp, hotplug, argv or scale; all when omitted.
        what: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Setup { profile, dry_run } => setup::run(profile, dry_run),
        Command::Ci => ci(),
        Command::Cross { target } => cross::run(target.as_deref()),
        Command::Examples => examples::run(),
        Command::Demo => demo::run(),
        Command::Bench { what } => bench::run(what.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err}");
            ExitCode::FAILURE
        }
    }
}

/// The test stage's `cargo` arguments (the build started with setup uses the same, so the
/// stage reuses all of it).
const TEST_ARGS: [&str; 4] = ["test", "--workspace", "--all-features", "--no-fail-fast"];

/// The CI pipeline. Each stage prints a header, its duration and the disk space left.
fn ci() -> Result<(), String> {
    let started = Instant::now();
    // CI builds each configuration once: incremental caches would only add gigabytes of disk.
    // (xtask is single-threaded here; every cargo it starts inherits this.)
    std::env::set_var("CARGO_INCREMENTAL", "0");
    if let Some(warning) = disk::available(&target_dir())
        .ok()
        .and_then(|free| disk::shortage(free, disk::CI_NEEDS))
    {
        eprintln!("xtask ci: warning: {warning}");
    }
    // The host test build needs nothing setup installs (the workspace has no C dependencies)
    // and setup mostly waits on downloads: the tests build meanwhile, and the test stage only
    // runs them. (If setup fails, dropping the build stops it.)
    let mut build = TEST_ARGS.to_vec();
    build.push("--no-run");
    std::fs::create_dir_all(target_dir())
        .map_err(|e| format!("cannot create the target directory: {e}"))?;
    let test_build = cargo(&build).spawn_logged(&target_dir().join("ci-test-build.log"))?;
    stage("setup", || setup::run(setup::Profile::Ci, false))?;
    stage("test build (started with setup)", || test_build.finish())?;
    stage("fmt", || cargo(&["fmt", "--all", "--", "--check"]).run())?;
    stage("clippy", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ])
        .run()
    })?;
    stage("test", || cargo(&TEST_ARGS).run())?;
    stage(
        "examples (minimal VMMs against the arm64 guest)",
        examples::run,
    )?;
    stage("package", || {
        // Every published crate packages on its own and builds from its package with all its
        // features, as docs.rs builds it (the async facade's `tokio` included); the test
        // build's dependencies then serve most of the verification builds, `qapi-qmp`'s
        // among them. hvarch-tests and xtask are not published.
        //
        // Each crate verifies against the others as packaged (a local registry, same
        // version). Cargo takes a registry crate of a version it has seen as unchanged: it
        // keeps the packages extracted under `$CARGO_HOME/registry/src` and their builds in
        // `target/`, so after a change to a published crate a second run here would verify its
        // dependents against the first run's copy. Remove both for the published crates first
        // (their dependencies' stay).
        let published = published_crates()?;
        remove_extracted_packages(&published)?;
        let mut clean = vec!["clean"];
        for name in &published {
            clean.extend(["-p", name.as_str()]);
        }
        cargo(&clean).run()?;
        cargo(&[
            "package",
            "--workspace",
            "--all-features",
            "--exclude",
            "hvarch-tests",
            "--exclude",
            "xtask",
        ])
        .run()
    })?;
    stage("doc", || {
        cargo(&["doc", "--workspace", "--all-features", "--no-deps"])
            .env("RUSTDOCFLAGS", "-D warnings")
            .run()
    })?;
    for target in cross::TARGETS {
        stage(&target.stage_name(), || target.run())?;
    }
    eprintln!("xtask ci: all stages passed in {:.0?}", started.elapsed());
    Ok(())
}

fn stage(name: &str, f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    eprintln!("\n==> {name}");
    let t = Instant::now();
    let result = f();
    let free = disk::available(&target_dir())
        .map(|bytes| format!("{} free", disk::gib(bytes)))
        .unwrap_or_else(|e| e);
    match &result {
        Ok(()) => eprintln!("<== {name}: ok in {:.1?} ({free})", t.elapsed()),
        Err(_) => eprintln!("<== {name}: FAILED after {:.1?} ({free})", t.elapsed()),
    }
    result.map_err(|e| format!("stage `{name}` failed: {e}"))
}

/// The published crates: the packages under `crates/`, each named as its directory.
fn published_crates() -> Result<Vec<String>, String> {
    let dir = run::workspace_root().join("crates");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("read {}: {e}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("read {}: {e}", dir.display()))?;
        if entry.path().join("Cargo.toml").is_file() {
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    Ok(names)
}

/// Removes what cargo extracted of `crates` from local registries (`cargo package`'s overlay
/// of the workspace) under `$CARGO_HOME/registry/src`; crates.io's extractions stay.
fn remove_extracted_packages(crates: &[String]) -> Result<(), String> {
    let home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set")?;
    let src = home.join("registry/src");
    let Ok(registries) = std::fs::read_dir(&src) else {
        return Ok(()); // Nothing extracted yet.
    };
    for registry in registries.flatten() {
        // crates.io's index is `index.crates.io-<hash>`; a local registry has no name.
        if registry.file_name().to_string_lossy().starts_with("index.") {
            continue;
        }
        let Ok(packages) = std::fs::read_dir(registry.path()) else {
            continue;
        };
        for package in packages.flatten() {
            if is_extraction_of(&package.file_name().to_string_lossy(), crates) {
                std::fs::remove_dir_all(package.path())
                    .map_err(|e| format!("remove {}: {e}", package.path().display()))?;
            }
        }
    }
    Ok(())
}

/// Whether `dir` (an extracted package's directory, `<name>-<version>`) is one of `crates`.
fn is_extraction_of(dir: &str, crates: &[String]) -> bool {
    crates.iter().any(|name| {
        dir.strip_prefix(name.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|version| version.starts_with(|c: char| c.is_ascii_digit()))
    })
}

/// Where cargo builds: `CARGO_TARGET_DIR`, else the workspace's `target/`.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(Into::into)
        .unwrap_or_else(|| run::workspace_root().join("target"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_crates_extractions_are_recognised() {
        let ours = ["hvarch".to_owned(), "hvarch-qmp".to_owned()];
        for dir in ["hvarch-0.1.0", "hvarch-qmp-0.1.0", "hvarch-qmp-0.2.0-rc.1"] {
            assert!(is_extraction_of(dir, &ours), "{dir}");
        }
        // Another crate sharing a prefix, a name alone, a non-version suffix.
        for dir in [
            "hvarch-arm64-0.1.0",
            "hvarch-qmpx-0.1.0",
            "hvarch",
            "hvarch-qmp-x",
            "qapi-qmp-0.15.0",
        ] {
            assert!(!is_extraction_of(dir, &ours), "{dir}");
        }
    }
}

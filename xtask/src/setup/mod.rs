//! `cargo xtask setup [--profile demo|ci] [--dry-run]`: what the demo or the tests need, from
//! Debian's registry, installed once.
//!
//! Setup is a pure planner and an executor, so what it does on a newcomer's machine is tested
//! without that machine:
//!
//! * [`state`] reads the machine (suites, package architectures, fetched package lists,
//!   installed packages and versions, the guest files, cargo-installed tools) and changes
//!   nothing;
//! * [`plan`] turns that state and a [`Profile`] into ordered [`Step`]s (unit-tested on a fresh
//!   machine, a complete one, and the half-set-up states in between);
//! * [`exec`] runs the steps, and a failure names the step, the package and the fix.
//!
//! What the profiles install (see `reference/qemu-here.md`):
//! * `demo`: QEMU 10 for arm64 guests from bookworm-backports (`qemu-system-arm`), the UEFI
//!   firmware (`qemu-efi-aarch64`), and the arm64 guest: Debian's cloud kernel (6.12, from
//!   bookworm-backports) and `busybox-static:arm64`, fetched with `apt-get download` into
//!   `target/guest/`;
//! * `ci`: the demo's, plus QEMU 10 for x86_64, ppc64 and s390x guests and qemu-user, Debian's
//!   `rustc-web` toolchain with the arm64, ppc64el and s390x standard libraries and GNU cross
//!   linkers, and `virtiofsd` built with `cargo install` into `target/tools/`.
//!
//! Run it again at any time: on a ready machine the plan is empty and nothing runs.

mod exec;
pub mod plan;
pub mod state;

pub use plan::{Dirs, Profile, Step};

use crate::run::workspace_root;

/// Where setup puts what it fetches and builds: `target/guest` (or `$HVARCH_GUEST_DIR`),
/// `target/tools`, `target/cross` (inside `target/`, like every cache).
pub fn dirs() -> Dirs {
    let target = workspace_root().join("target");
    Dirs {
        guest: hvarch_tests::guest::guest_dir(),
        tools: target.join("tools"),
        cross: target.join("cross"),
    }
}

/// The sysroot (`--sysroot`) of a cross target whose std setup extracted into `dir`
/// (`target/cross/<triple>`).
pub fn cross_sysroot(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join("root").join("usr")
}

/// Plans setup for `profile` on this machine; prints the plan, and carries it out unless
/// `dry_run`.
pub fn run(profile: Profile, dry_run: bool) -> Result<(), String> {
    let dirs = dirs();
    let machine = state::probe(&dirs);
    let steps = match plan::plan(&machine, profile, &dirs) {
        Ok(steps) => steps,
        Err(plan::PlanError::NotBookworm(os)) if !dry_run => {
            eprintln!("setup: {os} is not Debian bookworm: checking what is installed instead");
            return check_only(profile);
        }
        Err(e) => return Err(e.to_string()),
    };
    let profile_name = format!("{profile:?}").to_lowercase();
    if steps.is_empty() {
        eprintln!("setup ({profile_name}): everything is installed; nothing to do");
        return Ok(());
    }
    eprintln!("setup ({profile_name}): {} step(s):", steps.len());
    for (index, step) in steps.iter().enumerate() {
        eprintln!("  {}. {step}", index + 1);
    }
    if dry_run {
        return Ok(());
    }
    if !machine.is_root && steps.iter().any(Step::needs_root) {
        return Err(
            "setup needs root for the apt and dpkg steps above: run `cargo xtask setup` as root"
                .into(),
        );
    }
    exec::execute(&steps, &mut |line| eprintln!("setup: {line}"))?;
    // What was planned is done: the machine must now plan nothing.
    let after = state::probe(&dirs);
    let left = plan::plan(&after, profile, &dirs).map_err(|e| e.to_string())?;
    if !left.is_empty() {
        let left: Vec<String> = left.iter().map(ToString::to_string).collect();
        return Err(format!(
            "setup ran every step but the machine still lacks: {}",
            left.join("; ")
        ));
    }
    eprintln!("setup ({profile_name}): done");
    Ok(())
}

/// On a machine setup cannot install on: check that the tools of `profile` are present.
fn check_only(profile: Profile) -> Result<(), String> {
    let mut tools = vec!["qemu-system-aarch64"];
    if profile == Profile::Ci {
        tools.extend([
            "qemu-system-x86_64",
            "qemu-system-ppc64",
            "qemu-system-s390x",
            "qemu-aarch64",
        ]);
    }
    let mut missing: Vec<&str> = tools
        .into_iter()
        .filter(|t| crate::run::Step::new(t, &["--version"]).output().is_none())
        .collect();
    let firmware = hvarch_tests::guest::AAVMF_CODE;
    if !std::path::Path::new(firmware).exists() {
        missing.push(firmware);
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "missing: {} (install QEMU >= {}; see README)",
            missing.join(", "),
            plan::MIN_QEMU_MAJOR
        ))
    }
}

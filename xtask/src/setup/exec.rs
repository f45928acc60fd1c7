//! Carrying out a plan: each step run in order, the first failure stops it with a message
//! naming the step, what failed and how to fix it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use super::plan::{CrossTarget, Step, BACKPORTS, CROSS_STD_PACKAGE, RUSTC};
use super::state::CROSS_STD_STAMP;

/// apt waits this long for another apt or dpkg (unattended-upgrades on a fresh machine) to
/// release its lock instead of failing at once.
const APT_LOCK_TIMEOUT: &str = "DPkg::Lock::Timeout=300";

/// Runs `steps` in order.
pub fn execute(steps: &[Step], progress: &mut dyn FnMut(&str)) -> Result<(), String> {
    let total = steps.len();
    for (index, step) in steps.iter().enumerate() {
        let label = format!("step {} of {total} ({step})", index + 1);
        progress(&label);
        run_step(step, progress).map_err(|why| format!("setup {label} failed: {why}"))?;
    }
    Ok(())
}

fn run_step(step: &Step, progress: &mut dyn FnMut(&str)) -> Result<(), String> {
    match step {
        Step::AddSuite { suite, uri, file } => {
            let body = format!(
                "# Added by `cargo xtask setup` (hvarch): QEMU 10 and the guest kernel.\n\
                 Types: deb\nURIs: {uri}\nSuites: {suite}\nComponents: main\n\
                 Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
            );
            std::fs::write(file, body).map_err(|e| {
                format!(
                    "cannot write {}: {e} (setup needs root to add a package source)",
                    file.display()
                )
            })
        }
        Step::AddArchitecture(arch) => {
            run(Command::new("dpkg").args(["--add-architecture", arch])).map_err(|out| out.message)
        }
        Step::AptUpdate { lists, .. } => apt_update(lists, progress),
        Step::AptInstall {
            packages,
            release,
            allow_downgrades,
        } => {
            let install = || apt_install(packages, *release, *allow_downgrades);
            install().or_else(|failure| {
                if !failure.stale_lists() {
                    return Err(failure.diagnose(packages));
                }
                progress(
                    "the package lists are stale (a download failed): apt-get update and retry",
                );
                apt_update(&[], progress)?;
                install().map_err(|again| again.diagnose(packages))
            })
        }
        Step::FetchCrossStd { target, dir } => fetch_cross_std(target, dir),
        Step::RemovePartialGuest { dir } => remove_partial_guest(dir),
        Step::FetchGuest { dir } => {
            hvarch_tests::guest::fetch(dir, &mut |line| progress(line)).map(drop)
        }
        Step::CargoInstall { tool, root } => {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            run(Command::new(cargo)
                // A debug build without debug info: the tests need virtiofsd to work, not to
                // be fast or debugged, and it builds in a fraction of the release build's time
                // (`cargo install` reads no project configuration, so the environment says it).
                .env("CARGO_PROFILE_DEV_DEBUG", "false")
                .args(["install", "--locked", "--debug", "--root"])
                .arg(root)
                .arg(format!("{}@{}", tool.name, tool.version)))
            .map_err(|out| {
                format!(
                    "{} (virtiofsd needs libcap-ng-dev, libseccomp-dev and pkg-config: \
                     `apt-get install libcap-ng-dev libseccomp-dev pkg-config`)",
                    out.message
                )
            })
        }
    }
}

/// What a failed command printed.
struct Failure {
    message: String,
    stderr: String,
}

impl Failure {
    /// Whether apt failed because its lists name files the archive no longer has.
    fn stale_lists(&self) -> bool {
        self.stderr.contains("404")
            || self.stderr.contains("Unable to fetch some archives")
            || self.stderr.contains("Failed to fetch")
    }

    /// The error for a failed `apt-get install` of `packages`: the package at fault and the fix.
    fn diagnose(&self, packages: &[String]) -> String {
        let culprit = apt_culprit(&self.stderr);
        match culprit {
            Some(package) => {
                let fix = match package.split_once(':') {
                    Some((_, arch)) => format!(
                        "the {arch} package lists are missing: `dpkg --add-architecture {arch} && \
                         apt-get update`, then `cargo xtask setup` again"
                    ),
                    None if packages.iter().any(|p| p.starts_with("qemu-")) => format!(
                        "{BACKPORTS} is not enabled or its lists are stale: check \
                         /etc/apt/sources.list.d, `apt-get update`, then `cargo xtask setup` again"
                    ),
                    None => "`apt-get update`, then `cargo xtask setup` again".into(),
                };
                format!("apt-get cannot install {package}: {fix}")
            }
            None if self.stderr.contains("Could not get lock") => format!(
                "{}: another apt or dpkg holds its lock (unattended-upgrades?): wait for it, \
                 then `cargo xtask setup` again",
                self.message
            ),
            None => format!(
                "{} while installing {}: see apt-get's messages above",
                self.message,
                packages.join(" ")
            ),
        }
    }
}

/// The package apt-get names in `E: Unable to locate package X`, `E: Package 'X' has no
/// installation candidate` or `E: Version '…' for 'X' was not found`.
fn apt_culprit(stderr: &str) -> Option<String> {
    stderr.lines().find_map(|line| {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("E: Unable to locate package ") {
            return Some(rest.trim().to_owned());
        }
        let quoted = |s: &str| s.split('\'').nth(1).map(str::to_owned);
        if line.starts_with("E: Package '") && line.contains("has no installation candidate") {
            return quoted(line);
        }
        if line.starts_with("E: Version '") && line.contains("was not found") {
            return line
                .split("' for '")
                .nth(1)
                .and_then(|r| r.split('\'').next())
                .map(str::to_owned);
        }
        None
    })
}

/// `apt-get update`, judged by what it must bring: the package lists `needed`. apt fails the
/// whole update when any index fails (a mirror in the middle of a sync serves one with the
/// wrong size, say debian-security's for ppc64el); that is only a warning when every list
/// setup reads arrived.
fn apt_update(needed: &[(String, String)], progress: &mut dyn FnMut(&str)) -> Result<(), String> {
    let result = run(Command::new("apt-get").args(["-q", "-o", APT_LOCK_TIMEOUT, "update"]));
    let fetched = super::state::fetched_lists(
        std::fs::read_dir(super::state::APT_LISTS)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok()),
    );
    let missing: Vec<String> = needed
        .iter()
        .filter(|list| !fetched.contains(list))
        .map(|(suite, arch)| format!("{suite}/{arch}"))
        .collect();
    match result {
        Ok(()) if missing.is_empty() => Ok(()),
        Err(failure) if missing.is_empty() => {
            let failed: Vec<&str> = failure
                .stderr
                .lines()
                .filter(|l| l.starts_with("E: Failed to fetch"))
                .collect();
            let what = if failed.is_empty() {
                failure.message.clone()
            } else {
                failed.join("; ")
            };
            progress(&format!(
                "warning: apt-get update failed for index files setup does not read ({what}); \
                 every package list setup needs is there: continuing"
            ));
            Ok(())
        }
        _ => Err(format!(
            "apt-get update did not bring the package lists {}: check the network and the \
             sources in /etc/apt/sources.list.d, then `cargo xtask setup` again",
            missing.join(", ")
        )),
    }
}

fn apt_install(
    packages: &[String],
    release: Option<&str>,
    allow_downgrades: bool,
) -> Result<(), Failure> {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive").args([
        "-q",
        "-y",
        "-o",
        APT_LOCK_TIMEOUT,
        "install",
        "--no-install-recommends",
    ]);
    if allow_downgrades {
        command.arg("--allow-downgrades");
    }
    if let Some(release) = release {
        command.args(["-t", release]);
    }
    command.args(packages);
    run(&mut command)
}

/// Downloads the standard library of `target` at the installed `rustc-web`'s version and
/// extracts it into `dir/root` (a sysroot: `dir/root/usr`), then records the version in
/// `dir/VERSION`. `dir` is setup's own, under `target/cross/`: it is replaced whole.
fn fetch_cross_std(target: &CrossTarget, dir: &Path) -> Result<(), String> {
    let version = crate::run::Step::new("dpkg-query", &["-W", "-f=${Version}", RUSTC])
        .output()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| format!("{RUSTC} is not installed: it must be before its cross std"))?;
    let _ = std::fs::remove_dir_all(dir);
    let debs = dir.join("debs");
    let root = dir.join("root");
    for d in [&debs, &root] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    let package = format!("{CROSS_STD_PACKAGE}:{}={version}", target.arch);
    run(Command::new("apt-get")
        .args(["download", "-q", &package])
        .current_dir(&debs))
    .map_err(|failure| {
        format!(
            "cannot download {package}: {} (the {arch} package lists must be fetched, and \
             {RUSTC} must be a version the archive builds for {arch}: bookworm's own, \
             `apt-get install --allow-downgrades -t bookworm rustc-web cargo-web \
             rust-web-clippy`)",
            failure.message,
            arch = target.arch
        )
    })?;
    let entries =
        std::fs::read_dir(&debs).map_err(|e| format!("cannot read {}: {e}", debs.display()))?;
    for deb in entries.flatten() {
        run(Command::new("dpkg").arg("-x").arg(deb.path()).arg(&root))
            .map_err(|failure| failure.message)?;
    }
    let std_dir = super::cross_sysroot(dir)
        .join("lib/rustlib")
        .join(target.triple)
        .join("lib");
    let has_std = std::fs::read_dir(&std_dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.starts_with("libstd-") && name.ends_with(".rlib")
        })
    });
    if !has_std {
        return Err(format!(
            "{package} holds no libstd rlib under {}",
            std_dir.display()
        ));
    }
    let stamp = dir.join(CROSS_STD_STAMP);
    std::fs::write(&stamp, &version).map_err(|e| format!("cannot write {}: {e}", stamp.display()))
}

/// Removes the `debs/` and `root/` directories an interrupted fetch left in `dir` (the guest
/// directory under `target/` belongs to setup; nothing else in it is touched).
fn remove_partial_guest(dir: &Path) -> Result<(), String> {
    for sub in ["debs", "root"] {
        let path = dir.join(sub);
        match std::fs::remove_dir_all(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", path.display())),
        }
    }
    Ok(())
}

/// Runs `command` with stdout inherited and stderr both shown and kept.
fn run(command: &mut Command) -> Result<(), Failure> {
    let shown = format!("{command:?}").replace('"', "");
    eprintln!("$ {shown}");
    let mut child = command
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Failure {
            message: format!("cannot start `{shown}`: {e}"),
            stderr: String::new(),
        })?;
    let mut stderr = String::new();
    if let Some(pipe) = child.stderr.take() {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("{line}");
            stderr.push_str(&line);
            stderr.push('\n');
        }
    }
    let status = child.wait().map_err(|e| Failure {
        message: format!("cannot wait for `{shown}`: {e}"),
        stderr: stderr.clone(),
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(Failure {
            message: format!("`{shown}` exited with {status}"),
            stderr,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(stderr: &str) -> Failure {
        Failure {
            message: "`apt-get install …` exited with exit status: 100".into(),
            stderr: stderr.into(),
        }
    }

    #[test]
    fn a_missing_foreign_package_names_it_and_the_architecture_fix() {
        let err = failure("E: Unable to locate package libstd-rust-web-dev:arm64\n")
            .diagnose(&["rustc-web".into(), "libstd-rust-web-dev:arm64".into()]);
        assert_eq!(
            err,
            "apt-get cannot install libstd-rust-web-dev:arm64: the arm64 package lists are \
             missing: `dpkg --add-architecture arm64 && apt-get update`, then `cargo xtask \
             setup` again"
        );
    }

    #[test]
    fn a_qemu_without_candidate_points_at_backports() {
        let err = failure("E: Package 'qemu-system-arm' has no installation candidate\n")
            .diagnose(&["qemu-system-arm".into()]);
        assert!(
            err.starts_with("apt-get cannot install qemu-system-arm: bookworm-backports"),
            "{err}"
        );
        let err = failure("E: Version '1:10' for 'qemu-user' was not found\n")
            .diagnose(&["qemu-user".into()]);
        assert!(
            err.starts_with("apt-get cannot install qemu-user:"),
            "{err}"
        );
    }

    #[test]
    fn a_held_lock_and_unknown_failures_say_what_to_do() {
        let err =
            failure("E: Could not get lock /var/lib/dpkg/lock-frontend\n").diagnose(&["a".into()]);
        assert!(err.contains("another apt or dpkg holds its lock"), "{err}");
        let err = failure("E: Sub-process /usr/bin/dpkg returned an error code (1)\n")
            .diagnose(&["a".into(), "b".into()]);
        assert!(err.contains("while installing a b"), "{err}");
    }

    #[test]
    fn download_failures_mean_stale_lists() {
        assert!(failure("Err:1 http://deb.debian.org/debian bookworm/main amd64 x 1.0\n  404  Not Found [IP: 1.2.3.4 80]\n").stale_lists());
        assert!(!failure("E: Unable to locate package x\n").stale_lists());
    }
}

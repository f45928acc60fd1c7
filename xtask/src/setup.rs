//! `cargo xtask setup`: everything the tests need, from Debian's registry, installed once.
//!
//! Idempotent: each requirement is checked first, and only what is missing is installed.
//! What it installs (see `reference/qemu-here.md`):
//! * QEMU 10 from `bookworm-backports`: `qemu-system-arm`, `qemu-system-x86`, `qemu-user`;
//! * UEFI firmware for arm64 guests: `qemu-efi-aarch64` (AAVMF);
//! * the aarch64 cross toolchain that can run tests: Debian's `rustc-web`/`cargo-web` with the
//!   arm64 standard library, the GNU cross linker and the arm64 C runtime;
//! * the arm64 guest of the demo and the guest tests: Debian's cloud kernel (6.12, from
//!   bookworm-backports) and `busybox-static:arm64`, fetched with `apt-get download` into
//!   `target/guest/` (`hvarch_tests::guest::fetch`).

use std::fs;
use std::path::Path;

use crate::run::Step;

/// Packages taken from `bookworm-backports` (bookworm itself ships QEMU 7.2).
const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-arm", "qemu-system-x86", "qemu-user"];

/// Packages from the main suite.
const MAIN_PACKAGES: &[&str] = &[
    "qemu-efi-aarch64",
    "ipxe-qemu",
    "rustc-web",
    "cargo-web",
    "rust-web-clippy",
    "libstd-rust-web-dev:arm64",
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
];

/// The oldest QEMU the test-suite targets.
const MIN_QEMU_MAJOR: u32 = 10;

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/hvarch-bookworm-backports.sources";

/// Runs the setup.
pub fn run() -> Result<(), String> {
    let mut apt_updated = false;
    let mut update = |why: &str| -> Result<(), String> {
        if !apt_updated {
            eprintln!("setup: apt-get update ({why})");
            Step::new("apt-get", &["update", "-qq"]).run()?;
            apt_updated = true;
        }
        Ok(())
    };

    if !Path::new("/etc/debian_version").exists() {
        return check_only();
    }

    if add_backports_suite()? {
        update("new suite bookworm-backports")?;
    }
    if !foreign_arch_enabled("arm64") {
        eprintln!("setup: enabling the arm64 package architecture");
        Step::new("dpkg", &["--add-architecture", "arm64"]).run()?;
        update("new architecture arm64")?;
    }

    let qemu_ok = qemu_major("qemu-system-aarch64").is_some_and(|v| v >= MIN_QEMU_MAJOR)
        && qemu_major("qemu-system-x86_64").is_some_and(|v| v >= MIN_QEMU_MAJOR)
        && BACKPORTS_PACKAGES.iter().all(|p| installed(p));
    if qemu_ok {
        eprintln!("setup: QEMU >= {MIN_QEMU_MAJOR} present");
    } else {
        update("QEMU from bookworm-backports")?;
        eprintln!("setup: installing QEMU from bookworm-backports");
        let mut args = vec![
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "-t",
            "bookworm-backports",
        ];
        args.extend_from_slice(BACKPORTS_PACKAGES);
        Step::new("apt-get", &args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()?;
    }

    let missing: Vec<&str> = MAIN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        eprintln!("setup: firmware and aarch64 toolchain present");
    } else {
        update("missing packages")?;
        eprintln!("setup: installing {}", missing.join(" "));
        let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
        args.extend_from_slice(&missing);
        Step::new("apt-get", &args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .run()?;
    }
    check_only()?;
    guest_files()
}

/// Fetches (once) the arm64 guest's kernel and busybox into `target/guest/`.
fn guest_files() -> Result<(), String> {
    let dir = hvarch_tests::guest::guest_dir();
    let files = hvarch_tests::guest::fetch(&dir, &mut |line| eprintln!("setup: {line}"))?;
    eprintln!(
        "setup: arm64 guest present (Linux {}, busybox) in {}",
        files.release,
        dir.display()
    );
    Ok(())
}

/// Verifies that every tool the tests use is present, without installing anything.
fn check_only() -> Result<(), String> {
    let tools = [
        "qemu-system-aarch64",
        "qemu-system-x86_64",
        "qemu-aarch64",
        "aarch64-linux-gnu-gcc",
        "/usr/bin/rustc",
        "/usr/bin/cargo",
    ];
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|t| {
            Step::new("sh", &["-c", &format!("command -v {t}")])
                .output()
                .is_none()
        })
        .collect();
    for firmware in [
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "/usr/share/AAVMF/AAVMF_VARS.fd",
    ] {
        if !Path::new(firmware).exists() {
            return Err(format!(
                "UEFI firmware {firmware} is missing (package qemu-efi-aarch64)"
            ));
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "missing tools: {} (run `cargo xtask setup` as root on Debian bookworm)",
            missing.join(", ")
        ));
    }
    for qemu in ["qemu-system-aarch64", "qemu-system-x86_64"] {
        match qemu_major(qemu) {
            Some(v) if v >= MIN_QEMU_MAJOR => {}
            Some(v) => return Err(format!("{qemu} is version {v}, need >= {MIN_QEMU_MAJOR}")),
            None => return Err(format!("cannot read the version of {qemu}")),
        }
    }
    eprintln!("setup: all requirements present");
    Ok(())
}

/// Adds `bookworm-backports` with the URI and keyring of the existing Debian suite.
/// Returns whether a file was written.
fn add_backports_suite() -> Result<bool, String> {
    let mut existing = String::new();
    for dir in ["/etc/apt/sources.list.d"] {
        if let Ok(entries) = fs::read_dir(dir) {
            for entry in entries.flatten() {
                existing.push_str(&fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
    }
    existing.push_str(&fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    if existing
        .lines()
        .any(|l| !l.trim_start().starts_with('#') && l.contains("bookworm-backports"))
    {
        return Ok(false);
    }
    let uri = debian_uri(&existing).unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    let keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let body = format!(
        "# Added by `cargo xtask setup` (hvarch): QEMU 10 for the test-suite.\n\
         Types: deb\nURIs: {uri}\nSuites: bookworm-backports\nComponents: main\nSigned-By: {keyring}\n"
    );
    eprintln!("setup: adding {BACKPORTS_LIST} (bookworm-backports from {uri})");
    fs::write(BACKPORTS_LIST, body).map_err(|e| format!("cannot write {BACKPORTS_LIST}: {e}"))?;
    Ok(true)
}

/// The URI of the configured Debian main archive (deb822 `URIs:` or one-line `deb` form).
fn debian_uri(sources: &str) -> Option<String> {
    sources
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|line| {
            let line = line.trim();
            let uri = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().next()
            } else if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.contains("://"))
            } else {
                None
            }?;
            (uri.ends_with("/debian") || uri.ends_with("/debian/")).then(|| uri.to_owned())
        })
}

fn foreign_arch_enabled(arch: &str) -> bool {
    Step::new("dpkg", &["--print-foreign-architectures"])
        .output()
        .is_some_and(|out| out.lines().any(|l| l.trim() == arch))
}

fn installed(package: &str) -> bool {
    Step::new("dpkg-query", &["-W", "-f=${Status}", package])
        .output()
        .is_some_and(|s| s.contains("install ok installed"))
}

/// The major version QEMU reports, e.g. 10 for "QEMU emulator version 10.0.2".
fn qemu_major(binary: &str) -> Option<u32> {
    let out = Step::new(binary, &["--version"]).output()?;
    let version = out.split("version ").nth(1)?;
    version.split('.').next()?.trim().parse().ok()
}

//! `hvarch probe` against the installed QEMU, and the refusal of specs the binary cannot run
//! (by `probe`, `cmdline` and `run`), with clear non-zero exits for missing and bad files.

mod common;

use common::{examples_dir, hvarch, text};

use std::path::PathBuf;

/// An arm64 spec that also asks for `intel-iommu`, a device qemu-system-aarch64 lacks.
const LACKING_DEVICE: &str = r#"
arch = "aarch64"
id = "lacks-iommu"
runtime_dir = "RUNTIME"
host_cpus = 2
host_memory_mb = 4096
[hypervisor]
accelerator = "tcg"
kernel_path = "/dev/null"
initrd_path = "/dev/null"
[[extra_devices]]
type = "intel-iommu"
intremap = false
device_iotlb = false
caching_mode = false
"#;

fn lacking_spec(dir: &hvarch_tests::TempDir) -> (PathBuf, PathBuf) {
    let runtime = dir.join("run");
    let path = dir.join("lacks.toml");
    let text = LACKING_DEVICE.replace("RUNTIME", runtime.to_str().expect("utf-8"));
    std::fs::write(&path, text).expect("write spec");
    (path, runtime)
}

#[test]
fn probe_reports_host_and_binary() {
    let out = hvarch(&["probe", "--arch", "aarch64"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for wanted in [
        "host",
        "kvm:",
        "binary:       /usr/bin/qemu-system-aarch64",
        "version:      10.",
        "virt (virt-",
    ] {
        assert!(stdout.contains(wanted), "no {wanted:?} in:\n{stdout}");
    }
    let accels = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("accelerators:"))
        .expect("accelerators line");
    assert!(accels.contains("tcg"), "{accels}");
    let out = hvarch(&["probe", "--arch", "x86_64", "--all-machines"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("q35 (pc-q35-"), "{stdout}");
    assert!(stdout.lines().any(|l| l.trim() == "microvm"), "{stdout}");
}

#[test]
fn probe_checks_every_device_of_a_spec() {
    let spec = examples_dir().join("x86_64-q35-root-ports.toml");
    let out = hvarch(&["probe", "--accel", "tcg", spec.to_str().expect("utf-8")]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", text(&out.stderr));
    for wanted in [
        "machine q35: ok",
        "accelerator tcg: ok",
        "device pcie-root-port: ok",
        "device virtio-scsi-pci: ok",
        "object memory-backend-ram: ok",
        "can run this VM",
    ] {
        assert!(stdout.contains(wanted), "no {wanted:?} in:\n{stdout}");
    }
}

#[test]
fn a_device_the_binary_lacks_is_refused_before_qemu_runs() {
    let dir = hvarch_tests::TempDir::new();
    let (spec, runtime) = lacking_spec(&dir);
    let spec = spec.to_str().expect("utf-8");

    let out = hvarch(&["probe", spec]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("device intel-iommu: MISSING"));
    let err = text(&out.stderr);
    assert!(
        err.contains("/usr/bin/qemu-system-aarch64") && err.contains("no device `intel-iommu`"),
        "{err}"
    );

    for command in ["cmdline", "run"] {
        let out = hvarch(&[command, spec]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        assert!(out.stdout.is_empty(), "{command}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(
            err.starts_with(&format!("hvarch: {spec}: "))
                && err.contains("no device `intel-iommu`"),
            "{command}: {err}"
        );
        assert!(!runtime.exists(), "{command} created {}", runtime.display());
    }
    // `--no-check` prints the command line anyway.
    let out = hvarch(&["cmdline", "--no-check", spec]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("intel-iommu"));
}

#[test]
fn a_machine_the_binary_lacks_is_refused() {
    let dir = hvarch_tests::TempDir::new();
    let path = dir.join("q35-on-arm.toml");
    std::fs::write(
        &path,
        "arch = \"x86_64\"\nid = \"wrong-binary\"\nhost_cpus = 1\nhost_memory_mb = 4096\n\
         [hypervisor]\naccelerator = \"tcg\"\nmachine_type = \"q35\"\n\
         hypervisor_path = \"/usr/bin/qemu-system-aarch64\"\n\
         kernel_path = \"/dev/null\"\ninitrd_path = \"/dev/null\"\n",
    )
    .expect("write spec");
    let out = hvarch(&["cmdline", path.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("no machine type `q35`"), "{err}");
}

#[test]
fn missing_and_bad_spec_files() {
    for command in ["probe", "run"] {
        let out = hvarch(&[command, "/nonexistent/vm.toml"]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = text(&out.stderr);
        assert!(
            err.starts_with("hvarch: /nonexistent/vm.toml: cannot read spec file"),
            "{command}: {err}"
        );
    }
    let dir = hvarch_tests::TempDir::new();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "id = \"x\"\n[hypervisor]\nnum_vcpu = 2\n").expect("write");
    for command in ["probe", "run"] {
        let out = hvarch(&[command, bad.to_str().expect("utf-8")]);
        assert_eq!(out.status.code(), Some(1), "{command}");
        let err = text(&out.stderr);
        assert!(
            err.contains("bad.toml") && err.contains("num_vcpu"),
            "{command}: {err}"
        );
    }
}

//! `hvarch::probe` against the installed QEMU: what the binary reports, the refusal of a VM
//! it cannot run (naming what it lacks), the per-file cache (a replaced binary is probed
//! again), and a binary that is not QEMU.

use std::path::Path;
use std::sync::Arc;

use hvarch::probe::{self, Need, ProbeError, Requirements};
use hvarch::{assemble, Accelerator, GuestArch, VmSpec};
use hvarch_qmp::QemuVersion;
use hvarch_tests::TempDir;

const AARCH64: &str = "/usr/bin/qemu-system-aarch64";
const X86_64: &str = "/usr/bin/qemu-system-x86_64";

/// Kata's default arm64 VM under TCG, on a fixed host size.
fn arm64_spec() -> VmSpec {
    let mut spec = VmSpec::kata_default();
    spec.arch = Some(GuestArch::Aarch64);
    spec.hypervisor.accelerator = Accelerator::Tcg;
    spec.host_cpus = Some(2);
    spec.host_memory_mb = Some(4096);
    spec
}

#[test]
fn the_arm64_binary_reports_its_machines_devices_and_accelerators() {
    let caps = probe::capabilities(Path::new(AARCH64)).expect("probe qemu-system-aarch64");
    assert_eq!(caps.binary, Path::new(AARCH64));
    assert!(
        caps.version >= QemuVersion::new(7, 2, 0),
        "{}",
        caps.version
    );
    assert!(caps.has_machine("virt"));
    let virt = caps
        .machines
        .iter()
        .find(|m| m.alias.as_deref() == Some("virt"))
        .expect("virt");
    assert!(caps.has_machine(&virt.name));
    assert!(!caps.has_machine("q35"));
    assert!(caps.has_accelerator("tcg"), "{:?}", caps.accelerators);
    for device in [
        "virtio-blk-pci",
        "virtio-serial-pci",
        "pcie-root-port",
        "vhost-vsock-pci",
    ] {
        assert!(caps.has_type(device), "no {device}");
    }
    assert!(!caps.has_type("intel-iommu"));
    // Cached: the same answer, not a second QEMU.
    let again = probe::capabilities(Path::new(AARCH64)).expect("probe again");
    assert!(Arc::ptr_eq(&caps, &again));
    // Uncached: asked again, the same.
    assert_eq!(probe::query(Path::new(AARCH64)).expect("query"), *caps);
}

#[test]
fn a_vm_is_checked_against_its_binary() {
    let vm = assemble(&arm64_spec()).expect("assemble");
    let caps = probe::check(&vm).expect("Kata's default arm64 VM runs on qemu-system-aarch64");
    let req = Requirements::of(&vm).expect("requirements");
    assert_eq!(req.machine.as_deref(), Some("virt"));
    assert_eq!(req.accelerator.as_deref(), Some("tcg"));
    assert!(
        req.devices.iter().any(|d| d == "virtio-serial-pci"),
        "{req:?}"
    );
    assert!(caps.missing(&req).is_empty());

    // The same VM for the x86_64 binary: its machine type and arm-only devices are missing.
    let mut spec = arm64_spec();
    spec.hypervisor.hypervisor_path = Some(X86_64.into());
    let vm = assemble(&spec).expect("assemble");
    match probe::check(&vm) {
        Err(ProbeError::Unsupported {
            binary, missing, ..
        }) => {
            assert_eq!(binary, Path::new(X86_64));
            assert_eq!(missing[0], Need::Machine("virt".into()), "{missing:?}");
        }
        other => panic!("{other:?}"),
    }
    // Without the accelerator (a command line printed, not run), the same refusal.
    assert!(matches!(
        probe::check_without_accelerator(&vm),
        Err(ProbeError::Unsupported { .. })
    ));
}

#[test]
fn a_replaced_binary_is_probed_again() {
    let dir = TempDir::new();
    let link = dir.join("qemu");
    std::os::unix::fs::symlink(AARCH64, &link).expect("symlink");
    let before = probe::capabilities(&link).expect("probe through the link");
    assert!(before.has_machine("virt") && !before.has_machine("q35"));
    // An upgrade replaces the file under the same path.
    std::fs::remove_file(&link).expect("remove the link");
    std::os::unix::fs::symlink(X86_64, &link).expect("symlink");
    let after = probe::capabilities(&link).expect("probe the new binary");
    assert!(after.has_machine("q35"), "the old binary's answer was kept");
}

#[test]
fn a_binary_that_is_not_qemu_is_named_with_the_failing_step() {
    for (binary, command) in [("/bin/true", "greeting"), ("/bin/cat", "greeting")] {
        match probe::query(Path::new(binary)) {
            Err(e @ ProbeError::Qmp { .. }) => {
                let text = e.to_string();
                assert!(
                    text.starts_with(&format!("cannot probe {binary}: {command}: ")),
                    "{text}"
                );
            }
            other => panic!("{binary}: {other:?}"),
        }
    }
    assert!(matches!(
        probe::capabilities(Path::new("/nonexistent/qemu")),
        Err(ProbeError::NotFound { .. })
    ));
}

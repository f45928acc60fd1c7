//! `hvarch probe` against the installed QEMU, and the refusal of specs the binary cannot run
//! (by `probe`, `cmdline` and `run`), with clear non-zero exits for missing and bad files;
//! the JSON report's documented shape; what `-v`/`-vv` and `RUST_LOG` show on stderr.

mod common;

use common::{examples_dir, hvarch, text};

use std::path::PathBuf;

use serde_json::Value;

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

/// `probe --format json`, parsed; its exit code too.
fn probe_json(args: &[&str]) -> (Value, Option<i32>, String) {
    let mut all = vec!["probe", "--format", "json"];
    all.extend_from_slice(args);
    let out = hvarch(&all);
    let stdout = text(&out.stdout);
    let report: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{}", text(&out.stderr)));
    (report, out.status.code(), text(&out.stderr))
}

#[test]
fn probe_json_has_the_documented_shape() {
    let (report, code, stderr) = probe_json(&["--arch", "aarch64"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["schema"], 1);
    let host = &report["host"];
    assert_eq!(host["arch"], std::env::consts::ARCH);
    assert!(host["cpus"].as_u64().expect("cpus") >= 1);
    assert!(host["memory_mb"].as_u64().expect("memory_mb") > 0);
    let kvm = &host["kvm"];
    match kvm["usable"].as_bool().expect("kvm.usable") {
        true => assert!(
            kvm["api_version"].is_i64() && kvm["reason"].is_null(),
            "{kvm}"
        ),
        false => assert!(
            kvm["api_version"].is_null() && kvm["reason"].is_string(),
            "{kvm}"
        ),
    }
    let qemu = &report["qemu"];
    assert_eq!(qemu["guest_arch"], "aarch64");
    assert_eq!(qemu["binary"], "/usr/bin/qemu-system-aarch64");
    assert!(qemu["version"]
        .as_str()
        .expect("version")
        .starts_with("10."));
    assert!(qemu["package"].is_string());
    let accels: Vec<&str> = qemu["accelerators"]
        .as_array()
        .expect("accelerators")
        .iter()
        .map(|a| a.as_str().expect("a name"))
        .collect();
    assert!(accels.contains(&"tcg"), "{accels:?}");
    let machines = qemu["machines"].as_array().expect("machines");
    let virt = machines
        .iter()
        .find(|m| m["alias"] == "virt")
        .expect("a machine aliased virt");
    assert!(virt["name"].as_str().expect("name").starts_with("virt-"));
    assert!(virt["default"].is_boolean());
    assert!(qemu["default_machine"].is_null() || qemu["default_machine"].is_string());
    assert!(qemu["qom_types"].as_u64().expect("qom_types") > 100);
    assert!(report["spec"].is_null());
}

#[test]
fn probe_json_checks_a_spec_and_says_what_is_missing() {
    let spec = examples_dir().join("x86_64-q35-root-ports.toml");
    let (report, code, stderr) = probe_json(&["--accel", "tcg", spec.to_str().expect("utf-8")]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(report["qemu"]["guest_arch"], "x86_64");
    let checked = &report["spec"];
    assert_eq!(checked["can_run"], true);
    let needs = checked["needs"].as_array().expect("needs");
    assert_eq!(needs[0]["kind"], "machine");
    assert_eq!(needs[0]["name"], "q35");
    assert_eq!(needs.last().expect("needs")["kind"], "accelerator");
    assert!(needs
        .iter()
        .any(|n| n["kind"] == "device" && n["name"] == "pcie-root-port"));
    assert!(needs.iter().all(|n| n["available"] == true), "{needs:?}");

    let dir = hvarch_tests::TempDir::new();
    let (lacking, _) = lacking_spec(&dir);
    let (report, code, stderr) = probe_json(&[lacking.to_str().expect("utf-8")]);
    assert_eq!(code, Some(1), "the JSON is printed, and the exit says no");
    assert!(stderr.contains("no device `intel-iommu`"), "{stderr}");
    assert_eq!(report["spec"]["can_run"], false);
    let missing: Vec<&Value> = report["spec"]["needs"]
        .as_array()
        .expect("needs")
        .iter()
        .filter(|n| n["available"] == false)
        .collect();
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["kind"], "device");
    assert_eq!(missing[0]["name"], "intel-iommu");
}

#[test]
fn nothing_is_logged_by_default_and_vv_shows_the_probe() {
    let quiet = hvarch(&["probe", "--arch", "aarch64"]);
    assert!(quiet.status.success());
    assert_eq!(text(&quiet.stderr), "", "logged without -v");

    let out = hvarch(&["-vv", "probe", "--arch", "aarch64"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("DEBUG") && stderr.contains("probed QEMU") && stderr.contains("10."),
        "{stderr}"
    );
    // -v is progress only: the probe's details are debug.
    let out = hvarch(&["probe", "-v", "--arch", "aarch64"]);
    assert_eq!(text(&out.stderr), "", "-v shows no debug lines");

    // RUST_LOG decides when set.
    let out = common::command()
        .args(["probe", "--arch", "aarch64"])
        .env("RUST_LOG", "hvarch::probe=debug")
        .output()
        .expect("run hvarch");
    assert!(
        text(&out.stderr).contains("probed QEMU"),
        "{}",
        text(&out.stderr)
    );
}

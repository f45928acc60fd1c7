//! Every subcommand that prints exits quietly, with status 141 like a coreutils tool killed
//! by SIGPIPE, when its standard output is closed (`hvarch … | head` once `head` is gone):
//! no panic, no message. (`hvarch run`'s console: `run.rs`.)

mod common;

use common::{command, examples_dir, run_with_closed_stdout, OUTPUT_CLOSED};

use std::io::Write;
use std::process::Stdio;

use hvarch_tests::{args, QemuProcess, AARCH64_VIRT_TCG, QEMU_AARCH64};

fn assert_quiet_exit((code, stderr): (Option<i32>, String), what: &str) {
    assert_eq!(code, Some(OUTPUT_CLOSED), "{what}: {stderr}");
    assert!(stderr.is_empty(), "{what} said: {stderr}");
}

#[test]
fn cmdline_probe_and_completions() {
    let spec = examples_dir().join("x86_64-q35-root-ports.toml");
    let spec = spec.to_str().expect("utf-8");
    let cases: [&[&str]; 7] = [
        &["cmdline", "--arch", "aarch64", "--accel", "tcg"],
        &["cmdline", "--format", "lines", "--accel", "tcg", spec],
        &["probe", "--arch", "aarch64"],
        &["probe", "--format", "json", "--accel", "tcg", spec],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["completions", "fish"],
    ];
    for args in cases {
        assert_quiet_exit(
            run_with_closed_stdout(command().args(args)),
            &args.join(" "),
        );
    }
}

#[test]
fn qmp_one_shot_and_shell() {
    let qemu = QemuProcess::spawn(QEMU_AARCH64, &args(AARCH64_VIRT_TCG));
    let socket = qemu.qmp_path().to_str().expect("utf-8");
    assert_quiet_exit(
        run_with_closed_stdout(command().args(["qmp", socket, "query-cpus-fast"])),
        "qmp query-cpus-fast",
    );

    let mut shell = command()
        .args(["qmp", socket])
        .stdin(Stdio::piped())
        .stdout(common::closed_pipe())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hvarch qmp");
    // The shell has the whole input; it stops at the first reply it cannot print.
    let mut stdin = shell.stdin.take().expect("stdin");
    stdin
        .write_all(b"query-status\nquery-status\n")
        .expect("write commands");
    drop(stdin);
    let out = shell.wait_with_output().expect("wait");
    assert_quiet_exit((out.status.code(), common::text(&out.stderr)), "qmp shell");
    // QEMU was not disturbed.
    assert_eq!(
        qemu.raw_qmp().ok("query-status", serde_json::json!({}))["status"],
        "prelaunch"
    );
}

//! `hvarch qmp` against a running QEMU (paused arm64 `virt` under TCG, from the test
//! harness): one-shot commands with pretty replies, QMP errors as non-zero exits naming the
//! error class, and the shell fed from a pipe (replies and events).

mod common;

use common::{command, hvarch, text};

use std::io::Write;
use std::process::Stdio;

use hvarch_tests::{args, QemuProcess, AARCH64_VIRT_TCG, QEMU_AARCH64};

#[test]
fn one_shot_commands_and_errors() {
    let qemu = QemuProcess::spawn(QEMU_AARCH64, &args(AARCH64_VIRT_TCG));
    let socket = qemu.qmp_path().to_str().expect("utf-8").to_owned();

    let out = hvarch(&["qmp", &socket, "query-status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let reply: serde_json::Value = serde_json::from_str(&stdout).expect("JSON reply");
    assert_eq!(reply["status"], "prelaunch");
    assert!(
        stdout.contains("\n  \"status\""),
        "pretty-printed: {stdout}"
    );

    let out = hvarch(&[
        "qmp",
        &socket,
        "qom-get",
        r#"{"path": "/machine", "property": "type"}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("virt"), "{}", text(&out.stdout));

    let out = hvarch(&["qmp", &socket, "device_del", r#"{"id": "nope"}"#]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("device_del") && err.contains("DeviceNotFound") && err.contains("nope"),
        "{err}"
    );

    let out = hvarch(&["qmp", &socket, "no-such-command"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("CommandNotFound"));

    let out = hvarch(&["qmp", &socket, "device_del", "{not json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("not JSON"));

    let out = hvarch(&["qmp", "/nonexistent/qmp.sock", "query-status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/nonexistent/qmp.sock"));
}

#[test]
fn shell_from_a_pipe_prints_replies_and_events() {
    let qemu = QemuProcess::spawn(QEMU_AARCH64, &args(AARCH64_VIRT_TCG));
    let socket = qemu.qmp_path().to_str().expect("utf-8").to_owned();
    let mut child = command()
        .args(["qmp", &socket])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run hvarch qmp");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(
            b"query-status\n\
              qom-get {\"path\": \"/machine\", \"property\": \"type\"}\n\
              bogus-command\n\
              {\"execute\": \"cont\"}\n\
              query-status\n\
              quit\n",
        )
        .expect("write commands");
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("\"status\": \"prelaunch\""), "{stdout}");
    assert!(stdout.contains("error: QMP command `bogus-command` failed: CommandNotFound"));
    assert!(stdout.contains("\"status\": \"running\""), "{stdout}");
    assert!(stdout.contains("event {\"event\":\"RESUME\""), "{stdout}");
}

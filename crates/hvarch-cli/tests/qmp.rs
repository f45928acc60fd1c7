//! `hvarch qmp` against a running QEMU (paused arm64 `virt` under TCG, from the test
//! harness): one-shot commands with pretty replies, QMP errors as non-zero exits naming the
//! error class, the shell fed from a pipe (replies and events), and the shell at a terminal
//! (a pseudo-terminal): events printed above the prompt with the line being typed drawn
//! again, and lines typed ahead (in one burst) run at once.

mod common;

use common::{command, hvarch, text};

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use common::pty::Pty;
use hvarch_tests::{args, QemuProcess, AARCH64_VIRT_TCG, QEMU_AARCH64};
use serde_json::json;

/// A bound on the shell's answers on a loaded machine, not an assertion on speed.
const ANSWER: Duration = Duration::from_secs(60);

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

#[test]
fn shell_at_a_terminal_keeps_the_prompt_and_the_typed_line_through_events() {
    // A second monitor, for the events the shell did not cause (a QMP socket serves one
    // client at a time).
    let dir = hvarch_tests::TempDir::new();
    let second = dir.join("second.sock");
    let mut qemu_args = args(AARCH64_VIRT_TCG);
    qemu_args.push("-qmp".into());
    qemu_args.push(format!("unix:{},server=on,wait=off", second.display()));
    let qemu = QemuProcess::spawn_in(dir, QEMU_AARCH64, &qemu_args);
    let socket = qemu.qmp_path().to_str().expect("utf-8").to_owned();
    let mut shell = command();
    shell.args(["qmp", &socket]).env("TERM", "xterm");
    let mut pty = Pty::spawn(shell);
    let mut at = pty.wait_for("qmp> ", 0, ANSWER);

    // The issue's sequence: `stop` (an event), then the next command typed in one burst.
    pty.type_text("cont\r");
    at = pty.wait_for("event {\"event\":\"RESUME\"", at, ANSWER);
    at = pty.wait_for("qmp> ", at, ANSWER);
    pty.type_text("stop\r");
    at = pty.wait_for("event {\"event\":\"STOP\"", at, ANSWER);
    at = pty.wait_for("qmp> ", at, ANSWER);
    pty.type_text("query-status\r");
    at = pty.wait_for("\"status\": \"paused\"", at, ANSWER);
    at = pty.wait_for("qmp> ", at, ANSWER);

    // An event arriving while a line is half typed: printed above it, the prompt and the
    // half line drawn again below, and the rest of the line completes it.
    pty.type_text("query-sta");
    at = pty.wait_for("qmp> query-sta", at, ANSWER);
    let mut other = hvarch_tests::RawQmp::connect(&second);
    other.ok("cont", json!({}));
    at = pty.wait_for("event {\"event\":\"RESUME\"", at, ANSWER);
    at = pty.wait_for("qmp> query-sta", at, ANSWER);
    pty.type_text("tus\r");
    at = pty.wait_for("\"status\": \"running\"", at, ANSWER);

    // Tab completes from QEMU's command names; Ctrl-D leaves.
    pty.type_text("query-cpus-fa\t");
    at = pty.wait_for("qmp> query-cpus-fast ", at, ANSWER);
    pty.type_text("\r");
    at = pty.wait_for("\"cpu-index\": 0", at, ANSWER);
    pty.wait_for("qmp> ", at, ANSWER);
    pty.type_text("\x04");
    let status = pty.wait_exit(ANSWER);
    assert!(status.success(), "{status}: {}", pty.output());
}

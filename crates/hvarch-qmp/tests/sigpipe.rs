//! Writing to a QEMU that closed its end never raises SIGPIPE.
//!
//! Rust programs ignore SIGPIPE, but an embedder (a C host, a Go program through FFI) may leave
//! it at its default disposition, which kills the process. The test re-runs itself in a child
//! process that restores the default disposition and then makes both clients write to a peer
//! that no longer reads: during negotiation and for a command. The child must exit normally.

use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use hvarch_qmp::testing::{greeting_json, FakeServer};
use hvarch_qmp::{Config, Qmp};
use serde_json::Value;

const CHILD: &str = "HVARCH_QMP_SIGPIPE_CHILD";
const TEST: &str = "writes_to_a_closed_peer_never_raise_sigpipe";

#[test]
fn writes_to_a_closed_peer_never_raise_sigpipe() {
    if std::env::var_os(CHILD).is_some() {
        child();
        return;
    }
    let exe = std::env::current_exe().expect("test executable");
    // Under an emulator (`cargo xtask cross` sets HVARCH_TEST_RUNNER=qemu-<arch>), the child
    // runs under it too.
    let mut command = match std::env::var_os("HVARCH_TEST_RUNNER") {
        Some(runner) => {
            let mut command = Command::new(runner);
            command.arg(exe);
            command
        }
        None => Command::new(exe),
    };
    let out = command
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        None,
        "the child was killed by a signal (13 is SIGPIPE): {stderr}"
    );
    assert!(out.status.success(), "the child failed: {stderr}");
    // The child really ran the scenarios (not an empty filter match).
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = if cfg!(feature = "tokio") { 4 } else { 2 };
    assert!(
        stdout.contains(&format!("scenarios done: {expected}")),
        "{stdout}\n{stderr}"
    );
}

/// A socket whose peer sent the greeting and closed: the client reads the greeting, and its
/// `qmp_capabilities` write meets a closed socket.
fn greeted_then_closed() -> UnixStream {
    let (client, server) = UnixStream::pair().expect("pair");
    let mut greeting = serde_json::to_vec(&greeting_json()).expect("json");
    greeting.extend_from_slice(b"\r\n");
    std::io::Write::write_all(&mut &server, &greeting).expect("greet");
    drop(server);
    client
}

/// A negotiated peer that then stops receiving: the client's next write gets EPIPE, while its
/// reader sees no EOF.
fn negotiated_then_deaf() -> (UnixStream, FakeServer, std::sync::mpsc::Sender<()>) {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (client, server) = FakeServer::spawn(move |mut c| {
        c.greet();
        let cmd = c.expect_command("qmp_capabilities");
        // Deaf before the client learns it is negotiated: its first command write fails.
        c.shutdown_read();
        c.reply(&cmd, serde_json::json!({}));
        let _ = released.recv();
    })
    .expect("spawn");
    (client, server, release)
}

fn child() {
    // SAFETY: restoring the default disposition of SIGPIPE has no memory-safety requirements.
    let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    assert_ne!(previous, libc::SIG_ERR, "signal(SIGPIPE, SIG_DFL) failed");
    let mut done = 0;

    let err = Qmp::from_stream(greeted_then_closed(), &Config::default()).expect_err("closed");
    println!("blocking negotiation: {err}");
    done += 1;

    let (client, server, release) = negotiated_then_deaf();
    let qmp = Qmp::from_stream(client, &Config::default()).expect("negotiate");
    let err = qmp.execute_raw("x", Value::Null).expect_err("closed");
    println!("blocking command: {err}");
    drop(release);
    drop(qmp);
    server.join();
    done += 1;

    async_scenarios(&mut done);
    println!("scenarios done: {done}");
}

#[cfg(feature = "tokio")]
fn async_scenarios(done: &mut u32) {
    use hvarch_qmp::AsyncQmp;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let err = AsyncQmp::from_std(greeted_then_closed(), &Config::default())
            .await
            .expect_err("closed");
        println!("async negotiation: {err}");
        *done += 1;

        let (client, server, release) = negotiated_then_deaf();
        let qmp = AsyncQmp::from_std(client, &Config::default())
            .await
            .expect("negotiate");
        let err = qmp.execute_raw("x", Value::Null).await.expect_err("closed");
        println!("async command: {err}");
        drop(release);
        qmp.close().await;
        server.join();
        *done += 1;
    });
}

#[cfg(not(feature = "tokio"))]
fn async_scenarios(_: &mut u32) {}

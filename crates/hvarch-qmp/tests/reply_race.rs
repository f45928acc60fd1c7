//! A reply that arrived is never reported as a timeout.
//!
//! The test hook [`REPLY_ROUTED_HOOK`] runs after a client's session routed a reply to its
//! waiting caller and before the caller is given it; here it pauses well past the caller's
//! timeout. A client that delivers in the same critical section in which it routed makes the
//! timed-out caller wait for the lock and find its reply; one that delivers later loses it.
//! (This file is its own test process: the hook is global.)

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use hvarch_qmp::testing::{FakeConn, FakeServer, REPLY_ROUTED_HOOK};
use hvarch_qmp::{Command, Config, Qmp};
use serde_json::Value;

/// How many replies were routed to a waiting caller (the hook ran).
static ROUTED: AtomicU32 = AtomicU32::new(0);
/// The caller's timeout, and how long the hook holds a routed reply (well past it).
const TIMEOUT: Duration = Duration::from_millis(30);
const HOLD: Duration = Duration::from_millis(150);
const ROUNDS: u32 = 10;

fn hold_routed_reply() {
    ROUTED.fetch_add(1, Ordering::SeqCst);
    // On a tokio worker, hand the worker's duties (the timer among them) to another thread
    // while holding, so that the caller's timeout does fire meanwhile.
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(|| std::thread::sleep(HOLD));
    } else {
        std::thread::sleep(HOLD);
    }
}

fn echo_server() -> (std::os::unix::net::UnixStream, FakeServer) {
    FakeServer::spawn(|mut c: FakeConn| {
        c.handshake();
        c.echo_until_eof();
    })
    .expect("spawn fake server")
}

/// Checks one round: if the reply was routed to the caller before it gave up (the hook ran
/// since `routed_before`), the caller must have the reply. Returns whether it was routed (a
/// round that timed out before the reply even arrived, as a loaded machine may cause, tests
/// nothing).
fn check_round(round: u32, routed_before: u32, result: hvarch_qmp::Result<Value>) -> bool {
    if ROUTED.load(Ordering::SeqCst) == routed_before {
        return false;
    }
    let value = result.unwrap_or_else(|e| {
        panic!("round {round}: the reply was routed to the caller, yet it got `{e}`")
    });
    assert_eq!(value["echo"], "ping", "round {round}");
    true
}

#[test]
fn blocking_client_never_loses_a_routed_reply() {
    REPLY_ROUTED_HOOK.get_or_init(|| hold_routed_reply);
    let (client, server) = echo_server();
    let qmp = Qmp::from_stream(client, &Config::default()).expect("connect");
    let cmd = Command::bare("ping");
    let mut routed = 0;
    for round in 0..ROUNDS {
        let before = ROUTED.load(Ordering::SeqCst);
        let result = qmp.execute_with_timeout(&cmd, TIMEOUT);
        routed += u32::from(check_round(round, before, result));
    }
    assert!(
        routed > 0,
        "no reply was routed within {TIMEOUT:?}: nothing tested"
    );
    drop(qmp);
    server.join();
}

#[cfg(feature = "tokio")]
#[test]
fn async_client_never_loses_a_routed_reply() {
    REPLY_ROUTED_HOOK.get_or_init(|| hold_routed_reply);
    // Two workers: the hook blocks the reader task's thread while the caller's timer fires on
    // the other.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (client, server) = echo_server();
    rt.block_on(async {
        let qmp = hvarch_qmp::AsyncQmp::from_std(client, &Config::default())
            .await
            .expect("connect");
        let cmd = Command::bare("ping");
        let mut routed = 0;
        for round in 0..ROUNDS {
            let before = ROUTED.load(Ordering::SeqCst);
            let result = qmp.execute_with_timeout(&cmd, TIMEOUT).await;
            routed += u32::from(check_round(round, before, result));
        }
        assert!(
            routed > 0,
            "no reply was routed within {TIMEOUT:?}: nothing tested"
        );
        qmp.close().await;
    });
    server.join();
}

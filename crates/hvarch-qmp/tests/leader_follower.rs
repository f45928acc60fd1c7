//! The blocking client's callers read for themselves: when the leader's reply arrives it steps
//! down and a waiting follower takes over reading (rather than the background thread).
//!
//! The routing hook records which thread routed each reply (this file is its own process: the
//! hook is global). Thread `a` leads; thread `b` follows; QEMU answers `a` first, then, once
//! `a` has returned, `b`: `b`'s reply must be routed by `b` itself.

use std::sync::mpsc;
use std::sync::Mutex;

use hvarch_qmp::testing::{FakeServer, REPLY_ROUTED_HOOK};
use hvarch_qmp::{Config, Qmp};
use serde_json::{json, Value};

static ROUTED_BY: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn record_router() {
    let name = std::thread::current().name().unwrap_or("?").to_owned();
    ROUTED_BY
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(name);
}

fn routed_by() -> Vec<String> {
    ROUTED_BY.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// One round; returns whether thread `a` did lead (else the round proves nothing and is
/// repeated: `b` may rarely win the race to lead).
fn round(qmp: &Qmp, got: &mpsc::Receiver<&'static str>, answer: &mpsc::Sender<()>) -> bool {
    ROUTED_BY.lock().unwrap_or_else(|p| p.into_inner()).clear();
    std::thread::scope(|s| {
        let a = std::thread::Builder::new()
            .name("a".into())
            .spawn_scoped(s, || qmp.execute_raw("a", Value::Null))
            .expect("spawn a");
        assert_eq!(got.recv().expect("server got a"), "a");
        let b = std::thread::Builder::new()
            .name("b".into())
            .spawn_scoped(s, || qmp.execute_raw("b", Value::Null))
            .expect("spawn b");
        assert_eq!(got.recv().expect("server got b"), "b");
        // Answer a; once a has returned, answer b.
        answer.send(()).expect("answer a");
        assert_eq!(a.join().expect("a").expect("a")["echo"], "a");
        answer.send(()).expect("answer b");
        assert_eq!(b.join().expect("b").expect("b")["echo"], "b");
    });
    let routers = routed_by();
    assert_eq!(routers.len(), 2, "{routers:?}");
    if routers[0] != "a" {
        return false;
    }
    assert_eq!(
        routers[1], "b",
        "b's reply was not read by b, promoted when a's reply arrived: {routers:?}"
    );
    true
}

#[test]
fn a_follower_takes_over_reading_when_the_leaders_reply_arrives() {
    REPLY_ROUTED_HOOK.get_or_init(|| record_router);
    let (got_tx, got) = mpsc::channel();
    let (answer, answered) = mpsc::channel::<()>();
    let (client, server) = FakeServer::spawn(move |mut c| {
        c.handshake();
        while let Some(a) = c.recv() {
            got_tx.send("a").expect("report a");
            let b = c.expect_command("b");
            got_tx.send("b").expect("report b");
            answered.recv().expect("answer a");
            c.reply(&a, json!({"echo": "a"}));
            answered.recv().expect("answer b");
            c.reply(&b, json!({"echo": "b"}));
        }
    })
    .expect("spawn");
    let qmp = Qmp::from_stream(client, &Config::default()).expect("connect");
    let led = (0..20).filter(|_| round(&qmp, &got, &answer)).count();
    assert!(led > 0, "thread a never led: nothing tested");
    drop(qmp);
    server.join();
}

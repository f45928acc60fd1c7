//! The tokio client against the scripted fake QMP server.
#![cfg(feature = "tokio")]

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvarch_qmp::testing::{FakeConn, FakeServer};
use hvarch_qmp::{AsyncQmp, Command, Config, Error, EventFilter};
use serde_json::{json, Value};

fn config() -> Config {
    Config {
        command_timeout: Duration::from_secs(5),
        greeting_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

async fn start(script: impl FnOnce(FakeConn) + Send + 'static) -> (AsyncQmp, FakeServer) {
    let (client, server) = FakeServer::spawn(script).expect("spawn fake server");
    let qmp = AsyncQmp::from_std(client, &config())
        .await
        .expect("connect");
    (qmp, server)
}

#[tokio::test]
async fn events_before_greeting_and_negotiation_refused() {
    let (qmp, server) = start(|mut c| {
        c.event("VSERPORT_CHANGE", json!({"id": "channel0", "open": true}));
        c.handshake();
        c.echo_until_eof();
    })
    .await;
    assert_eq!(qmp.take_early_events().len(), 1);
    assert_eq!(qmp.version().to_string(), "10.0.2");
    qmp.close().await;
    server.join();

    let (client, server) = FakeServer::spawn(|mut c| {
        c.greet();
        let cmd = c.expect_command("qmp_capabilities");
        c.reply_error(&cmd, "CommandNotFound", None);
    })
    .expect("spawn");
    let err = AsyncQmp::from_std(client, &config())
        .await
        .expect_err("refused");
    assert!(matches!(err, Error::Negotiation(_)), "{err}");
    server.join();
}

#[tokio::test]
async fn errors_and_out_of_order_replies() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmds: Vec<Value> = (0..3).map(|_| c.recv().expect("command")).collect();
        for cmd in cmds.iter().rev() {
            if cmd["execute"] == "bad" {
                c.reply_error(cmd, "GenericError", None);
            } else {
                c.reply(cmd, json!({"name": cmd["execute"]}));
            }
        }
        c.echo_until_eof();
    })
    .await;
    let (a, b, bad) = tokio::join!(
        qmp.execute_raw("a", Value::Null),
        qmp.execute_raw("b", Value::Null),
        qmp.execute_raw("bad", Value::Null),
    );
    assert_eq!(a.expect("a")["name"], "a");
    assert_eq!(b.expect("b")["name"], "b");
    assert!(matches!(bad, Err(Error::Command { ref class, .. }) if class == "GenericError"));
    drop(qmp);
    server.join();
}

#[tokio::test]
async fn eof_mid_command_fails_pending_promptly() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let _ = c.recv();
        let _ = c.recv();
        c.hang_up();
    })
    .await;
    let t = Instant::now();
    let (a, b) = tokio::join!(
        qmp.execute_raw("a", Value::Null),
        qmp.execute_raw("b", Value::Null)
    );
    assert!(matches!(a, Err(Error::Disconnected)));
    assert!(matches!(b, Err(Error::Disconnected)));
    assert!(t.elapsed() < Duration::from_secs(2));
    assert!(!qmp.is_connected());
    let mut sub = qmp.subscribe();
    assert!(matches!(sub.recv().await, Err(Error::Disconnected)));
    qmp.close().await;
    qmp.close().await;
    server.join();
}

#[tokio::test]
async fn garbage_and_oversize_lines() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let _ = c.recv();
        c.send_raw(b"\x00\xff garbage\n");
        let _ = c.recv();
    })
    .await;
    let err = qmp
        .execute_raw("x", Value::Null)
        .await
        .expect_err("protocol");
    assert!(matches!(err, Error::Protocol(_)), "{err}");
    drop(qmp);
    server.join();

    let (client, server) = FakeServer::spawn(|mut c| {
        c.handshake();
        let cmd = c.recv().expect("cmd");
        c.reply(&cmd, json!("y".repeat(5000)));
        let _ = c.recv();
    })
    .expect("spawn");
    let cfg = Config {
        max_message_size: 1000,
        ..config()
    };
    let qmp = AsyncQmp::from_std(client, &cfg).await.expect("connect");
    let err = qmp
        .execute_raw("x", Value::Null)
        .await
        .expect_err("oversize");
    assert!(
        matches!(err, Error::Protocol(ref m) if m.contains("maximum size")),
        "{err}"
    );
    drop(qmp);
    server.join();
}

#[tokio::test]
async fn timeout_and_dropped_future_are_cancel_safe() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let slow = c.expect_command("slow");
        let dropped = c.expect_command("dropped");
        std::thread::sleep(Duration::from_millis(250));
        c.reply(&dropped, json!("late-dropped"));
        c.reply(&slow, json!("late-slow"));
        c.echo_until_eof();
    })
    .await;
    let slow_cmd = Command::bare("slow");
    let slow = qmp.execute_with_timeout(&slow_cmd, Duration::from_millis(100));
    let dropped = async {
        // A future abandoned by `select!` after it was polled (its command already queued).
        tokio::select! {
            _ = qmp.execute_raw("dropped", Value::Null) => panic!("must not finish"),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    let (slow, ()) = tokio::join!(slow, dropped);
    assert!(matches!(slow, Err(Error::Timeout { .. })), "{slow:?}");
    let r = qmp
        .execute_raw("next", json!({"k": "v"}))
        .await
        .expect("still in sync");
    assert_eq!(r, json!({"echo": "next", "arguments": {"k": "v"}}));
    drop(qmp);
    server.join();
}

/// A bound, not a speed target: 1000 events take about 2 s under qemu-user on a loaded
/// machine (`cargo xtask cross`), a few milliseconds natively.
const FLOOD_BOUND: Duration = Duration::from_secs(30);

#[tokio::test]
async fn event_flood_and_device_deleted_filter() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.expect_command("device_del");
        for i in 0..1000 {
            c.event("RTC_CHANGE", json!({"offset": i}));
        }
        c.event(
            "DEVICE_DELETED",
            json!({"device": "other", "path": "/machine/peripheral/other"}),
        );
        c.reply(&cmd, json!({}));
        c.event(
            "DEVICE_DELETED",
            json!({"device": "net0", "path": "/machine/peripheral/net0"}),
        );
        let cmd = c.expect_command("system_powerdown");
        c.reply(&cmd, json!({}));
        c.event("POWERDOWN", Value::Null);
        c.echo_until_eof();
    })
    .await;
    let mut all = qmp.subscribe_filtered(EventFilter::name("RTC_CHANGE"));
    let e = qmp.device_del("net0", FLOOD_BOUND).await.expect("deleted");
    assert_eq!(e.data["device"], "net0");
    for i in 0..1000 {
        let e = all.recv_timeout(FLOOD_BOUND).await.expect("event");
        assert_eq!(e.data["offset"], json!(i));
    }
    qmp.system_powerdown(FLOOD_BOUND).await.expect("powerdown");
    let err = qmp
        .wait_event(&EventFilter::name("NEVER"), Duration::from_millis(50))
        .await
        .expect_err("timeout");
    assert!(matches!(err, Error::Timeout { .. }));
    drop(qmp);
    server.join();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_from_many_tasks_and_fd_passing() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.expect_command("getfd");
        assert_eq!(c.take_fds().len(), 1);
        c.reply(&cmd, json!({}));
        c.echo_until_eof();
    })
    .await;
    let file = std::fs::File::open("/dev/null").expect("open");
    qmp.getfd("fd0", file.as_fd()).await.expect("getfd");
    let qmp = Arc::new(qmp);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let qmp = Arc::clone(&qmp);
            tokio::spawn(async move {
                for i in 0..50 {
                    let r = qmp
                        .execute_raw("echo", json!({"t": t, "i": i}))
                        .await
                        .expect("reply");
                    assert_eq!(r["arguments"], json!({"t": t, "i": i}));
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    qmp.close().await;
    server.join();
}

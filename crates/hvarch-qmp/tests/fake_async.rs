//! The tokio client against the scripted fake QMP server.
#![cfg(feature = "tokio")]

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hvarch_qmp::testing::{FakeConn, FakeServer};
use hvarch_qmp::{AsyncQmp, Command, Config, Error, EventFilter};
use serde_json::{json, Value};

/// How long a test waits for what must come: a bound, not a speed target. 1000 events take
/// about 2 s under qemu-user on a loaded machine (`cargo xtask cross`), a few milliseconds
/// natively.
const BOUND: Duration = Duration::from_secs(30);

/// The default configuration for the fake server: a command waits twice [`BOUND`], so a check
/// that something fails within `BOUND` tells "promptly" from "at the command timeout".
fn config() -> Config {
    Config {
        command_timeout: 2 * BOUND,
        greeting_timeout: BOUND,
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
    assert!(t.elapsed() < BOUND, "took {:?}", t.elapsed());
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
    let said = err.to_string();
    assert!(
        said.starts_with("QMP protocol error: inbound line is not valid JSON ("),
        "{said}"
    );
    assert_eq!(said.matches("QMP protocol error").count(), 1, "{said}");
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
    let e = qmp.device_del("net0", BOUND).await.expect("deleted");
    assert_eq!(e.data["device"], "net0");
    for i in 0..1000 {
        let e = all.recv_timeout(BOUND).await.expect("event");
        assert_eq!(e.data["offset"], json!(i));
    }
    qmp.system_powerdown(BOUND).await.expect("powerdown");
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

/// A server that negotiates, then never reads again until the test ends.
fn never_reads() -> (
    std::os::unix::net::UnixStream,
    FakeServer,
    std::sync::mpsc::Sender<()>,
) {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (client, server) = FakeServer::spawn(move |mut c| {
        c.handshake();
        let _ = released.recv();
    })
    .expect("spawn");
    (client, server, release)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_ends_the_session() {
    let (client, server, release) = never_reads();
    let cfg = Config {
        command_timeout: Duration::from_millis(300),
        ..config()
    };
    let qmp = AsyncQmp::from_std(client, &cfg).await.expect("connect");
    let mut sub = qmp.subscribe();
    // More than the socket buffer holds: the write blocks.
    let big = json!({"data": "x".repeat(4 << 20)});
    // A descriptor queued behind it: the only other copy is the test's, dropped below.
    let (passed, watch) = std::os::unix::net::UnixStream::pair().expect("pair");
    let (big, fd) = tokio::join!(
        qmp.execute_raw("big", big),
        qmp.getfd("fd0", passed.as_fd())
    );
    drop(passed);
    assert!(matches!(big, Err(Error::Timeout { .. })), "{big:?}");
    assert!(matches!(fd, Err(Error::Timeout { .. })), "{fd:?}");
    // The session ends: subscriptions end, every command fails, the client says so.
    let end = tokio::time::timeout(BOUND, sub.recv()).await;
    assert!(matches!(end, Ok(Err(Error::Disconnected))), "{end:?}");
    assert!(!qmp.is_connected());
    assert!(matches!(
        qmp.execute_raw("after", Value::Null).await,
        Err(Error::Disconnected)
    ));
    // The queued command's descriptor was closed with it: its peer reads EOF.
    watch.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut &watch, &mut byte).expect("EOF, not WouldBlock"),
        0
    );
    drop(release);
    qmp.close().await;
    server.join();
}

/// Lets every spawned task of the current-thread runtime run until it waits.
async fn let_tasks_run() {
    for _ in 0..4 {
        tokio::task::yield_now().await;
    }
}

/// Starts a server whose script waits at some point for the test's go-ahead (its receiver).
async fn start_gated(
    script: impl FnOnce(FakeConn, std::sync::mpsc::Receiver<()>) + Send + 'static,
) -> (Arc<AsyncQmp>, FakeServer, std::sync::mpsc::Sender<()>) {
    let (go, gone) = std::sync::mpsc::channel();
    let (qmp, server) = start(move |c| script(c, gone)).await;
    (Arc::new(qmp), server, go)
}

/// Lets the tasks run until they wait, gives the server its go-ahead, waits for every task and
/// closes.
async fn go_and_finish(
    qmp: Arc<AsyncQmp>,
    server: FakeServer,
    go: std::sync::mpsc::Sender<()>,
    mut tasks: tokio::task::JoinSet<()>,
) {
    let_tasks_run().await;
    go.send(()).expect("go");
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    qmp.close().await;
    server.join();
}

#[tokio::test]
async fn the_ninth_command_waits_for_a_reply_and_all_complete() {
    let (qmp, server, go) = start_gated(|mut c, gone| {
        c.handshake();
        let first: Vec<Value> = (0..8).map(|_| c.recv().expect("command")).collect();
        gone.recv().expect("all nine submitted");
        assert!(!c.has_pending(), "a ninth command was written");
        c.reply(&first[0], json!({"n": first[0]["arguments"]["n"]}));
        let ninth = c.recv().expect("the ninth");
        assert_eq!(ninth["arguments"]["n"], 8);
        for cmd in first.iter().skip(1).chain([&ninth]) {
            c.reply(cmd, json!({"n": cmd["arguments"]["n"]}));
        }
        c.echo_until_eof();
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..9 {
        let qmp = Arc::clone(&qmp);
        tasks.spawn(async move {
            let r = qmp.execute_raw("q", json!({"n": n})).await.expect("reply");
            assert_eq!(r["n"], n);
        });
    }
    go_and_finish(qmp, server, go, tasks).await;
}

#[tokio::test]
async fn events_arrive_while_no_command_runs() {
    let (go, gone) = std::sync::mpsc::channel::<()>();
    let (qmp, server) = start(move |mut c| {
        c.handshake();
        gone.recv().expect("go");
        c.event("FIRST", json!({}));
        c.echo_until_eof();
    })
    .await;
    let mut sub = qmp.subscribe();
    go.send(()).expect("go");
    let first = sub.recv_timeout(BOUND).await.expect("FIRST");
    assert_eq!(first.name, "FIRST");
    qmp.close().await;
    server.join();
}

/// The reader clears its readiness after a read that empties the socket: the end of the stream
/// that follows a reply and an event must still be seen.
#[tokio::test]
async fn the_end_of_the_stream_right_after_a_reply_is_seen() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.recv().expect("command");
        c.reply(&cmd, json!({}));
        c.event("LAST", json!({}));
        c.hang_up();
    })
    .await;
    let mut sub = qmp.subscribe();
    qmp.execute_raw("a", Value::Null).await.expect("reply");
    assert_eq!(sub.recv_timeout(BOUND).await.expect("LAST").name, "LAST");
    assert!(matches!(
        sub.recv_timeout(BOUND).await,
        Err(Error::Disconnected)
    ));
    assert!(!qmp.is_connected());
    qmp.close().await;
    server.join();
}

/// Fills the eight slots with commands the server holds, then queues more behind them.
async fn eight_held(qmp: &Arc<AsyncQmp>, tasks: &mut tokio::task::JoinSet<()>) {
    for n in 0..8 {
        let qmp = Arc::clone(qmp);
        tasks.spawn(async move {
            qmp.execute_raw("held", json!({"n": n}))
                .await
                .expect("held");
        });
    }
    let_tasks_run().await;
}

#[tokio::test]
async fn a_queued_command_that_times_out_is_left_out_of_the_coalesced_batch() {
    let (qmp, server, go) = start_gated(|mut c, gone| {
        c.handshake();
        let held: Vec<Value> = (0..8).map(|_| c.recv().expect("held")).collect();
        gone.recv().expect("the middle one timed out");
        // All slots free at once: whatever waits may go together.
        c.reply_all(&held);
        // What waited is written together, without the command that gave up.
        let burst = c.recv_burst();
        let names: Vec<&Value> = burst.iter().map(|c| &c["execute"]).collect();
        assert_eq!(names, ["x", "z"], "{burst:?}");
        for cmd in &burst {
            c.reply(cmd, json!({"name": cmd["execute"]}));
        }
        c.echo_until_eof();
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    eight_held(&qmp, &mut tasks).await;
    let expect_name = |name: &'static str| {
        let qmp = Arc::clone(&qmp);
        async move {
            let r = qmp.execute_raw(name, Value::Null).await.expect(name);
            assert_eq!(r["name"], name);
        }
    };
    tasks.spawn(expect_name("x"));
    let y = qmp
        .execute_with_timeout(&Command::bare("y"), Duration::from_millis(20))
        .await;
    assert!(matches!(y, Err(Error::Timeout { .. })), "{y:?}");
    tasks.spawn(expect_name("z"));
    go_and_finish(qmp, server, go, tasks).await;
}

#[tokio::test]
async fn descriptors_go_alone_between_coalesced_commands() {
    let (qmp, server, go) = start_gated(|mut c, gone| {
        c.handshake();
        let held: Vec<Value> = (0..8).map(|_| c.recv().expect("held")).collect();
        gone.recv().expect("queued");
        c.reply_all(&held);
        let mut got = Vec::new();
        while got.len() < 5 {
            let (cmd, fds) = c.recv_with_fds().expect("command");
            got.push((cmd["execute"].clone(), fds.len()));
            c.reply(&cmd, json!({}));
        }
        // In order, and the descriptor came with the first byte of `getfd`: its write was not
        // coalesced behind `a` and `b` (that it takes nothing behind it either is the session's
        // rule, property-tested in `flow_control`).
        assert_eq!(
            got,
            [("a", 0), ("b", 0), ("getfd", 1), ("c", 0), ("d", 0)].map(|(n, f)| (json!(n), f))
        );
        c.echo_until_eof();
    })
    .await;
    let mut tasks = tokio::task::JoinSet::new();
    eight_held(&qmp, &mut tasks).await;
    let file = std::fs::File::open("/dev/null").expect("open");
    for name in ["a", "b", "getfd", "c", "d"] {
        let qmp = Arc::clone(&qmp);
        let fd = file.try_clone().expect("dup");
        tasks.spawn(async move {
            if name == "getfd" {
                qmp.getfd("fd0", fd.as_fd()).await.expect("getfd");
            } else {
                qmp.execute_raw(name, Value::Null).await.expect(name);
            }
        });
        let_tasks_run().await;
    }
    go_and_finish(qmp, server, go, tasks).await;
}

/// A lone caller on a current-thread runtime sleeps once per round trip: nothing but the reply
/// wakes the runtime. Were the socket registered for writability all along, the runtime would
/// also wake each time the peer has consumed a command (QEMU reads each one byte by byte while
/// the caller waits): twice per round trip.
#[tokio::test(flavor = "current_thread")]
async fn a_lone_caller_sleeps_once_per_round_trip() {
    const ROUND_TRIPS: i64 = 40;
    let (qmp, server) = start(|mut c| {
        c.handshake();
        c.answer_slowly(Duration::from_millis(3));
    })
    .await;
    let before = hvarch_qmp::testing::thread_sleeps();
    for _ in 0..ROUND_TRIPS {
        qmp.execute_raw("query-status", json!({}))
            .await
            .expect("reply");
    }
    if let (Some(before), Some(after)) = (before, hvarch_qmp::testing::thread_sleeps()) {
        let sleeps = after - before;
        assert!(
            sleeps < ROUND_TRIPS * 3 / 2,
            "{sleeps} sleeps in {ROUND_TRIPS} round trips"
        );
    }
    qmp.close().await;
    server.join();
}

/// A command larger than the socket takes at once waits for room and goes out whole once the
/// peer reads: the writing descriptor, registered with the runtime only for that wait, wakes
/// the flusher when the peer makes room.
#[tokio::test(flavor = "current_thread")]
async fn a_command_larger_than_the_socket_goes_out_when_the_peer_reads() {
    let data = "x".repeat(4 << 20);
    let expected = data.len();
    let (qmp, server) = start(move |mut c| {
        c.handshake();
        // The client's write fills the socket meanwhile and waits for room.
        std::thread::sleep(Duration::from_millis(200));
        let cmd = c.expect_command("big");
        let len = cmd["arguments"]["data"].as_str().map_or(0, str::len);
        c.reply(&cmd, json!({"len": len}));
        c.echo_until_eof();
    })
    .await;
    let reply = qmp
        .execute_raw("big", json!({"data": data}))
        .await
        .expect("the whole command went out and was answered");
    assert_eq!(reply["len"], expected);
    // The connection goes on.
    let echo = qmp.execute_raw("after", json!({})).await.expect("reply");
    assert_eq!(echo["echo"], "after");
    qmp.close().await;
    server.join();
}

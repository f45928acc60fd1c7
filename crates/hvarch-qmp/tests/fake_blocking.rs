//! The blocking client against the scripted fake QMP server.

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use hvarch_qmp::testing::{FakeConn, FakeServer};
use hvarch_qmp::{Command, Config, Error, EventFilter, Qmp};
use serde_json::{json, Value};

/// How long a test waits for what must come: a bound, not a speed target. A flood of events
/// takes seconds under qemu-user on a loaded machine (`cargo xtask cross`), milliseconds
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

fn start(script: impl FnOnce(FakeConn) + Send + 'static) -> (Qmp, FakeServer) {
    start_with(&config(), script)
}

/// A server that negotiates and echoes every command back.
fn start_echo() -> (Qmp, FakeServer) {
    start(|mut c| {
        c.handshake();
        c.echo_until_eof();
    })
}

fn start_with(
    config: &Config,
    script: impl FnOnce(FakeConn) + Send + 'static,
) -> (Qmp, FakeServer) {
    let (client, server) = FakeServer::spawn(script).expect("spawn fake server");
    let qmp = Qmp::from_stream(client, config).expect("connect to fake server");
    (qmp, server)
}

#[test]
fn events_before_greeting_are_kept() {
    let (qmp, server) = start(|mut c| {
        c.event("VSERPORT_CHANGE", json!({"id": "channel0", "open": true}));
        c.event("SOMETHING_NEW", json!({}));
        c.handshake();
        c.echo_until_eof();
    });
    assert_eq!(qmp.version().to_string(), "10.0.2");
    assert!(qmp.greeting().supports_oob());
    let early: Vec<String> = qmp
        .take_early_events()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(early, ["VSERPORT_CHANGE", "SOMETHING_NEW"]);
    assert!(qmp.is_connected());
    qmp.close();
    server.join();
}

#[test]
fn oob_negotiated_by_default_and_off_when_asked() {
    assert!(Config::default().enable_oob);
    for (enable_oob, arguments) in [(true, json!({"enable": ["oob"]})), (false, Value::Null)] {
        let cfg = Config {
            enable_oob,
            ..config()
        };
        let (qmp, server) = start_with(&cfg, move |mut c| {
            c.greet();
            let cmd = c.expect_command("qmp_capabilities");
            assert_eq!(
                cmd.get("arguments").cloned().unwrap_or(Value::Null),
                arguments
            );
            c.reply(&cmd, json!({}));
            c.echo_until_eof();
        });
        assert_eq!(
            qmp.execute_raw("x", Value::Null).expect("usable")["echo"],
            "x"
        );
        drop(qmp);
        server.join();
    }
}

#[test]
fn negotiation_refused() {
    let (client, server) = FakeServer::spawn(|mut c| {
        c.greet();
        let cmd = c.expect_command("qmp_capabilities");
        c.reply_error(
            &cmd,
            "GenericError",
            Some("capabilities negotiation is already complete"),
        );
    })
    .expect("spawn");
    let err = Qmp::from_stream(client, &config()).expect_err("must fail");
    assert!(
        matches!(err, Error::Negotiation(ref m) if m.contains("already complete")),
        "{err}"
    );
    server.join();
}

#[test]
fn greeting_timeout_and_eof() {
    let cfg = Config {
        greeting_timeout: Duration::from_millis(150),
        ..config()
    };
    let (client, server) = FakeServer::spawn(|mut c| {
        let _ = c.recv(); // never greets; waits for the client to go away
    })
    .expect("spawn");
    let t = Instant::now();
    let err = Qmp::from_stream(client, &cfg).expect_err("must time out");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(t.elapsed() < BOUND);
    server.join();

    let (client, server) = FakeServer::spawn(FakeConn::hang_up).expect("spawn");
    let err = Qmp::from_stream(client, &cfg).expect_err("must fail");
    assert!(matches!(err, Error::Greeting(_)), "{err}");
    server.join();
}

#[test]
fn error_replies_with_and_without_desc() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.expect_command("device_del");
        c.reply_error(&cmd, "DeviceNotFound", Some("Device 'nope' not found"));
        let cmd = c.expect_command("device_del");
        c.reply_error(&cmd, "GenericError", None);
        c.echo_until_eof();
    });
    match qmp.execute_raw("device_del", json!({"id": "nope"})) {
        Err(Error::Command {
            command,
            class,
            desc,
        }) => {
            assert_eq!(command, "device_del");
            assert_eq!(class, "DeviceNotFound");
            assert_eq!(desc, "Device 'nope' not found");
        }
        other => panic!("{other:?}"),
    }
    let err = qmp
        .execute_raw("device_del", json!({"id": "nope"}))
        .expect_err("error");
    assert!(
        err.to_string().contains("GenericError")
            && err.to_string().contains("no error description"),
        "{err}"
    );
    // Still usable.
    assert_eq!(
        qmp.execute_raw("stop", Value::Null).expect("ok")["echo"],
        "stop"
    );
    drop(qmp);
    server.join();
}

#[test]
fn out_of_order_replies() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmds: Vec<Value> = (0..3).map(|_| c.recv().expect("command")).collect();
        for cmd in cmds.iter().rev() {
            c.reply(cmd, json!({"name": cmd["execute"]}));
        }
        c.echo_until_eof();
    });
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|i| {
                let qmp = &qmp;
                s.spawn(move || {
                    let name = format!("cmd-{i}");
                    let r = qmp.execute_raw(&name, Value::Null).expect("reply");
                    assert_eq!(r["name"], json!(name));
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread");
        }
    });
    drop(qmp);
    server.join();
}

#[test]
fn eof_mid_command_fails_all_pending_at_once() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let _a = c.recv().expect("first");
        let _b = c.recv().expect("second");
        c.hang_up();
    });
    let t = Instant::now();
    std::thread::scope(|s| {
        let a = s.spawn(|| qmp.execute_raw("a", Value::Null));
        let b = s.spawn(|| qmp.execute_raw("b", Value::Null));
        assert!(matches!(
            a.join().expect("thread"),
            Err(Error::Disconnected)
        ));
        assert!(matches!(
            b.join().expect("thread"),
            Err(Error::Disconnected)
        ));
    });
    assert!(t.elapsed() < BOUND, "took {:?}", t.elapsed());
    assert!(!qmp.is_connected());
    assert!(matches!(
        qmp.execute_raw("c", Value::Null),
        Err(Error::Disconnected)
    ));
    let mut sub = qmp.subscribe();
    assert!(sub.next().is_none());
    qmp.close();
    qmp.close();
    server.join();
}

#[test]
fn garbage_line_ends_session_with_protocol_error() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let _ = c.recv().expect("command");
        c.send_raw(b"this is not json\r\n");
        let _ = c.recv();
    });
    let err = qmp
        .execute_raw("query-status", Value::Null)
        .expect_err("error");
    assert!(
        matches!(err, Error::Protocol(ref m) if m.contains("not valid JSON")),
        "{err}"
    );
    // The prefix is said once.
    let said = err.to_string();
    assert!(
        said.starts_with("QMP protocol error: inbound line is not valid JSON ("),
        "{said}"
    );
    assert_eq!(said.matches("QMP protocol error").count(), 1, "{said}");
    assert!(said.ends_with("): this is not json"), "{said}");
    assert!(matches!(
        qmp.execute_raw("x", Value::Null),
        Err(Error::Disconnected)
    ));
    drop(qmp);
    server.join();
}

#[test]
fn error_without_id_ends_session() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let _ = c.recv().expect("command");
        c.send(&json!({"error": {"class": "GenericError", "desc": "JSON parse error, invalid keyword"}}));
        let _ = c.recv();
    });
    let err = qmp
        .execute_raw("query-status", Value::Null)
        .expect_err("error");
    assert!(
        matches!(err, Error::Protocol(ref m) if m.contains("parse error")),
        "{err}"
    );
    drop(qmp);
    server.join();
}

#[test]
fn oversize_line_ends_session() {
    let cfg = Config {
        max_message_size: 4096,
        ..config()
    };
    let (qmp, server) = start_with(&cfg, |mut c| {
        c.handshake();
        let cmd = c.recv().expect("command");
        c.reply(&cmd, json!("x".repeat(10_000)));
        let _ = c.recv();
    });
    let err = qmp
        .execute_raw("query-qmp-schema", Value::Null)
        .expect_err("error");
    let said = err.to_string();
    assert!(
        said.starts_with(
            "QMP protocol error: inbound QMP message exceeds the maximum size of 4096 bytes ("
        ),
        "{said}"
    );
    assert_eq!(said.matches("QMP protocol error").count(), 1, "{said}");
    assert!(!qmp.is_connected());
    drop(qmp);
    server.join();
}

#[test]
fn slow_reply_times_out_and_late_reply_is_dropped() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let slow = c.expect_command("slow");
        std::thread::sleep(Duration::from_millis(1500));
        c.reply(&slow, json!("late"));
        c.echo_until_eof();
    });
    let t = Instant::now();
    let err = qmp
        .execute_with_timeout(&Command::bare("slow"), Duration::from_millis(100))
        .expect_err("timeout");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // Well before the reply (1.5 s), with room for a loaded machine.
    assert!(
        t.elapsed() < Duration::from_millis(1200),
        "{:?}",
        t.elapsed()
    );
    // The late reply arrives while this command waits; it must not be taken for this one.
    let r = qmp.execute_raw("next", json!({"n": 1})).expect("usable");
    assert_eq!(r, json!({"echo": "next", "arguments": {"n": 1}}));
    assert!(qmp.is_connected());
    drop(qmp);
    server.join();
}

#[test]
fn event_flood_while_command_waits() {
    const N: usize = 2000;
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.expect_command("query-status");
        for i in 0..N {
            c.event("RTC_CHANGE", json!({"offset": i}));
        }
        c.reply(&cmd, json!({"running": false, "status": "prelaunch"}));
        c.echo_until_eof();
    });
    let sub = qmp.subscribe_filtered(EventFilter::name("RTC_CHANGE"));
    let status = qmp
        .execute(&hvarch_qmp::qapi_qmp::query_status {})
        .expect("status");
    assert!(!status.running);
    let mut n = 0;
    while let Ok(e) = sub.recv_timeout(BOUND) {
        assert_eq!(e.data["offset"], json!(n));
        assert_eq!(e.timestamp.microseconds, 123_456);
        n += 1;
        if n == N {
            break;
        }
    }
    assert_eq!(n, N);
    drop(qmp);
    server.join();
}

#[test]
fn device_deleted_for_another_device_first() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.expect_command("device_del");
        assert_eq!(cmd["arguments"], json!({"id": "disk1"}));
        // The event may even come before the reply.
        c.event(
            "DEVICE_DELETED",
            json!({"device": "disk0", "path": "/machine/peripheral/disk0"}),
        );
        c.reply(&cmd, json!({}));
        c.event(
            "DEVICE_DELETED",
            json!({"path": "/machine/peripheral-anon/device[3]"}),
        );
        c.event(
            "DEVICE_DELETED",
            json!({"device": "disk1", "path": "/machine/peripheral/disk1"}),
        );
        let cmd = c.expect_command("system_powerdown");
        c.event("POWERDOWN", Value::Null);
        c.reply(&cmd, json!({}));
        let cmd = c.expect_command("device_del");
        c.reply(&cmd, json!({}));
        c.echo_until_eof();
    });
    let event = qmp.device_del("disk1", BOUND).expect("deleted");
    assert_eq!(event.data["device"], "disk1");
    qmp.system_powerdown(BOUND).expect("powerdown");
    // Never released: a timeout, not a hang.
    let err = qmp
        .device_del("stuck", Duration::from_millis(100))
        .expect_err("timeout");
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    drop(qmp);
    server.join();
}

#[test]
fn commands_from_many_threads() {
    let (qmp, server) = start_echo();
    std::thread::scope(|s| {
        for t in 0..8 {
            let qmp = &qmp;
            s.spawn(move || {
                for i in 0..50 {
                    let r = qmp
                        .execute_raw("echo", json!({"t": t, "i": i}))
                        .expect("reply");
                    assert_eq!(r["arguments"], json!({"t": t, "i": i}));
                }
            });
        }
    });
    drop(qmp);
    server.join();
}

/// Callers that give up at any moment (while leading, following, or just promoted) never leave
/// the others without a reader: every patient caller gets its own reply, and so does a last one.
#[test]
fn callers_giving_up_at_random_moments_strand_nobody() {
    let (qmp, server) = start_echo();
    std::thread::scope(|s| {
        for t in 0..8u64 {
            let qmp = &qmp;
            s.spawn(move || {
                let mut seed = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                for i in 0..300u64 {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    let args = json!({"t": t, "i": i});
                    let command = Command::new("echo", args.clone());
                    // Half give up within 0–255 µs (mostly before the reply), half wait.
                    let patient = seed % 2 == 0;
                    let timeout = if patient {
                        BOUND
                    } else {
                        Duration::from_micros(seed >> 56)
                    };
                    match qmp.execute_with_timeout(&command, timeout) {
                        Ok(reply) => assert_eq!(reply["arguments"], args, "another's reply"),
                        Err(Error::Timeout { .. }) if !patient => {}
                        Err(e) => panic!("thread {t}, command {i} (timeout {timeout:?}): {e}"),
                    }
                }
            });
        }
    });
    let last = qmp
        .execute_with_timeout(&Command::new("echo", json!({"last": true})), BOUND)
        .expect("a reader is left");
    assert_eq!(last["arguments"], json!({"last": true}));
    drop(qmp);
    server.join();
}

#[test]
fn close_fails_pending_and_is_idempotent() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        while c.recv().is_some() {}
    });
    std::thread::scope(|s| {
        let pending = s.spawn(|| qmp.execute_raw("never", Value::Null));
        std::thread::sleep(Duration::from_millis(50));
        qmp.close();
        assert!(matches!(
            pending.join().expect("thread"),
            Err(Error::Disconnected)
        ));
    });
    qmp.close();
    assert!(!qmp.is_connected());
    drop(qmp);
    server.join();
}

#[test]
fn getfd_and_add_fd_pass_descriptors() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.expect_command("getfd");
        assert_eq!(cmd["arguments"], json!({"fdname": "tap0"}));
        assert_eq!(c.take_fds().len(), 1);
        c.reply(&cmd, json!({}));
        let cmd = c.expect_command("add-fd");
        assert_eq!(cmd["arguments"], json!({"fdset-id": 3, "opaque": "disk"}));
        assert_eq!(c.take_fds().len(), 1);
        c.reply(&cmd, json!({"fdset-id": 3, "fd": 42}));
        c.echo_until_eof();
    });
    let file = std::fs::File::open("/dev/null").expect("open");
    qmp.getfd("tap0", file.as_fd()).expect("getfd");
    let info = qmp
        .add_fd(Some(3), Some("disk"), file.as_fd())
        .expect("add-fd");
    assert_eq!((info.fdset_id, info.fd), (3, 42));
    drop(qmp);
    server.join();
}

#[test]
fn typed_decode_failure_keeps_connection() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.expect_command("query-status");
        c.reply(
            &cmd,
            json!({"running": true, "status": "a-state-from-qemu-12", "new-field": 1}),
        );
        c.echo_until_eof();
    });
    let err = qmp
        .execute(&hvarch_qmp::qapi_qmp::query_status {})
        .expect_err("decode");
    match err {
        Error::Decode { raw, .. } => assert_eq!(raw["status"], "a-state-from-qemu-12"),
        other => panic!("{other:?}"),
    }
    assert!(qmp.execute_raw("x", Value::Null).is_ok());
    drop(qmp);
    server.join();
}

#[test]
fn hotplug_memory_rolls_back() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let cmd = c.expect_command("object-add");
        c.reply(&cmd, json!({}));
        let cmd = c.expect_command("device_add");
        c.reply_error(&cmd, "GenericError", Some("no slot"));
        let cmd = c.expect_command("object-del");
        assert_eq!(cmd["arguments"], json!({"id": "mem1"}));
        c.reply(&cmd, json!({}));
        c.echo_until_eof();
    });
    let plan = hvarch_qmp::commands::pc_dimm_add("memory-backend-ram", "mem1", "", 128, false);
    let err = qmp.hotplug_memory(&plan).expect_err("device_add fails");
    assert!(err.to_string().contains("no slot"));
    drop(qmp);
    server.join();
}

#[test]
fn a_peer_that_stops_reading_ends_the_session() {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let cfg = Config {
        command_timeout: Duration::from_millis(300),
        ..config()
    };
    let (qmp, server) = start_with(&cfg, move |mut c| {
        c.handshake();
        let _ = released.recv();
    });
    let sub = qmp.subscribe();
    // More than the socket buffer holds: the write blocks until its timeout.
    let err = qmp
        .execute_raw("big", json!({"data": "x".repeat(4 << 20)}))
        .expect_err("write times out");
    assert!(
        matches!(err, Error::Timeout { ref what, .. } if what.contains("writing")),
        "{err}"
    );
    assert!(matches!(sub.recv_timeout(BOUND), Err(Error::Disconnected)));
    assert!(!qmp.is_connected());
    assert!(matches!(
        qmp.execute_raw("after", Value::Null),
        Err(Error::Disconnected)
    ));
    drop(release);
    drop(qmp);
    server.join();
}

#[test]
fn more_than_eight_commands_wait_their_turn_and_all_complete() {
    const CALLERS: usize = 16;
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let mut unanswered = std::collections::VecDeque::new();
        let mut answered = 0;
        while answered < CALLERS {
            if unanswered.len() == 8 {
                // Eight written and unanswered: a ninth must wait in the client.
                assert!(!c.has_pending(), "a ninth command was written");
            }
            if unanswered.len() < 8 && (unanswered.is_empty() || c.has_pending()) {
                unanswered.push_back(c.recv().expect("command"));
                continue;
            }
            let cmd: Value = unanswered.pop_front().expect("one");
            c.reply(&cmd, json!({"n": cmd["arguments"]["n"]}));
            answered += 1;
        }
        c.echo_until_eof();
    });
    std::thread::scope(|s| {
        for n in 0..CALLERS {
            let qmp = &qmp;
            s.spawn(move || {
                let r = qmp.execute_raw("q", json!({"n": n})).expect("reply");
                assert_eq!(r["n"], n);
            });
        }
    });
    drop(qmp);
    server.join();
}

#[test]
fn events_arrive_while_no_command_runs() {
    let (go, gone) = std::sync::mpsc::channel::<()>();
    let (qmp, server) = start(move |mut c| {
        c.handshake();
        gone.recv().expect("go");
        c.event("FIRST", json!({}));
        let cmd = c.expect_command("x");
        c.reply(&cmd, json!({}));
        // After a command, when the caller that read its reply has left.
        gone.recv().expect("go again");
        c.event("SECOND", json!({}));
        c.echo_until_eof();
    });
    let sub = qmp.subscribe();
    go.send(()).expect("go");
    let first = sub.recv_timeout(BOUND).expect("FIRST");
    assert_eq!(first.name, "FIRST");
    qmp.execute_raw("x", Value::Null).expect("x");
    go.send(()).expect("go again");
    let second = sub.recv_timeout(BOUND).expect("SECOND");
    assert_eq!(second.name, "SECOND");
    drop(qmp);
    server.join();
}

#[test]
fn a_command_timing_out_in_the_middle_of_a_written_batch() {
    let (qmp, server) = start(|mut c| {
        c.handshake();
        let mut batch = Vec::new();
        while batch.len() < 3 {
            batch.push(c.recv().expect("command"));
        }
        // Answer all but the one in the middle of the batch.
        let (late, answered): (Vec<Value>, Vec<Value>) =
            batch.into_iter().partition(|cmd| cmd["execute"] == "late");
        for cmd in &answered {
            c.reply(cmd, json!({"name": cmd["execute"]}));
        }
        // Its caller gives up; then its reply comes, and must be dropped.
        let next = c.expect_command("next");
        c.reply(&late[0], json!("too late"));
        c.reply(&next, json!({"name": "next"}));
        // The late reply freed its slot: eight commands are in flight at once again.
        let eight: Vec<Value> = (0..8).map(|_| c.recv().expect("eight in flight")).collect();
        c.reply_all(&eight);
        c.echo_until_eof();
    });
    std::thread::scope(|s| {
        let a = s.spawn(|| qmp.execute_raw("a", Value::Null));
        let late = s
            .spawn(|| qmp.execute_with_timeout(&Command::bare("late"), Duration::from_millis(200)));
        let c = s.spawn(|| qmp.execute_raw("c", Value::Null));
        assert_eq!(a.join().expect("a").expect("a")["name"], "a");
        assert_eq!(c.join().expect("c").expect("c")["name"], "c");
        let late = late.join().expect("late");
        assert!(matches!(late, Err(Error::Timeout { .. })), "{late:?}");
    });
    assert_eq!(
        qmp.execute_raw("next", Value::Null).expect("next")["name"],
        "next"
    );
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| qmp.execute_raw("again", Value::Null).expect("again"));
        }
    });
    assert!(qmp.is_connected());
    drop(qmp);
    server.join();
}

#[test]
fn descriptors_between_coalesced_commands() {
    let (go, gone) = std::sync::mpsc::channel::<()>();
    let (qmp, server) = start(move |mut c| {
        c.handshake();
        let held: Vec<Value> = (0..8).map(|_| c.recv().expect("held")).collect();
        gone.recv().expect("queued");
        assert!(!c.has_pending(), "a ninth command was written");
        // All slots free at once: the five queued commands go out together, but for `getfd`.
        c.reply_all(&held);
        let mut got = Vec::new();
        while got.len() < 5 {
            let (cmd, fds) = c.recv_with_fds().expect("command");
            got.push((cmd["execute"].clone(), fds.len()));
            c.reply(&cmd, json!({}));
        }
        // The descriptor came with the first byte of `getfd` (whatever the order the threads
        // queued in): its write was not coalesced behind other commands.
        let with_fds: Vec<_> = got.iter().filter(|(_, fds)| *fds > 0).collect();
        assert_eq!(with_fds, [&(json!("getfd"), 1)], "{got:?}");
        c.echo_until_eof();
    });
    let file = std::fs::File::open("/dev/null").expect("open");
    std::thread::scope(|s| {
        let held: Vec<_> = (0..8)
            .map(|n| {
                let qmp = &qmp;
                s.spawn(move || qmp.execute_raw("held", json!({ "n": n })).expect("held"))
            })
            .collect();
        // Not a timed assertion: a thread still on its way when the slots free up only makes
        // the batch smaller.
        std::thread::sleep(Duration::from_millis(200));
        let mut queued = Vec::new();
        for name in ["a", "b", "c", "d"] {
            let qmp = &qmp;
            queued.push(s.spawn(move || qmp.execute_raw(name, Value::Null).map(drop)));
        }
        let getfd = s.spawn(|| qmp.getfd("fd0", file.as_fd()));
        std::thread::sleep(Duration::from_millis(200));
        go.send(()).expect("go");
        for t in held {
            t.join().expect("held thread");
        }
        for t in queued {
            t.join().expect("thread").expect("queued command");
        }
        getfd.join().expect("getfd thread").expect("getfd");
    });
    drop(qmp);
    server.join();
}

//! No timeout value panics: every public API of this crate that takes a `Duration` accepts the
//! extremes (zero, one nanosecond, `u64::MAX` seconds, `Duration::MAX`, huge nanoseconds) and
//! anything between. A timeout too large to add to the clock means "no deadline": with such a
//! timeout every call against a responsive server succeeds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hvarch_qmp::testing::{FakeConn, FakeServer};
use hvarch_qmp::{Command, Config, Error, EventFilter, Qmp};
use proptest::prelude::*;
use serde_json::{json, Value};

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::MAX),
        Just(Duration::ZERO),
        Just(Duration::from_nanos(1)),
        Just(Duration::from_secs(u64::MAX)),
        Just(Duration::new(u64::MAX, 999_999_999)),
        Just(Duration::from_nanos(u64::MAX)),
        Just(Duration::from_millis(u64::MAX)),
        (any::<u64>(), 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..5_000_000).prop_map(Duration::from_nanos),
    ]
}

/// Whether `d` is long enough that a responsive server must answer within it (an hour).
fn ample(d: Duration) -> bool {
    d >= Duration::from_secs(3600)
}

/// A server that answers everything, emits `TICK` for `tick`, `DEVICE_DELETED` for
/// `device_del` and `POWERDOWN` for `system_powerdown`, until the client goes away. It never
/// panics, whatever the client gives up on.
fn responsive() -> (std::os::unix::net::UnixStream, FakeServer) {
    FakeServer::spawn(|mut c: FakeConn| {
        c.greet();
        while let Some(cmd) = c.recv() {
            match cmd["execute"].as_str() {
                Some("tick") => c.event("TICK", Value::Null),
                Some("device_del") => {
                    let id = cmd["arguments"]["id"].clone();
                    c.event("DEVICE_DELETED", json!({ "device": id }));
                }
                Some("system_powerdown") => c.event("POWERDOWN", Value::Null),
                Some("query-status") => {
                    c.reply(&cmd, json!({"running": false, "status": "prelaunch"}));
                    continue;
                }
                _ => {}
            }
            c.reply(&cmd, json!({}));
        }
    })
    .expect("spawn fake server")
}

/// `result` is what a call with timeout `d` may return: success, or (unless `d` is ample) a
/// timeout.
fn check<T: std::fmt::Debug>(what: &str, d: Duration, result: &Result<T, Error>) {
    match result {
        Ok(_) => {}
        Err(Error::Timeout { .. }) if !ample(d) => {}
        Err(e) => panic!("{what} with {d:?}: {e}"),
    }
}

fn blocking_calls(d: Duration) {
    let config = Config {
        command_timeout: d,
        greeting_timeout: d,
        ..Config::default()
    };
    let (client, server) = responsive();
    let qmp = Qmp::from_stream(client, &config);
    check("Qmp::from_stream", d, &qmp);
    let Ok(qmp) = qmp else {
        server.join();
        return;
    };
    check(
        "execute",
        d,
        &qmp.execute(&hvarch_qmp::qapi_qmp::query_status {}),
    );
    check(
        "execute_with_timeout",
        d,
        &qmp.execute_with_timeout(&Command::bare("x"), d),
    );
    let tick = EventFilter::name("TICK");
    check(
        "execute_and_wait_event",
        d,
        &qmp.execute_and_wait_event(&Command::bare("tick"), &tick, d),
    );
    check("device_del", d, &qmp.device_del("disk0", d));
    check("system_powerdown", d, &qmp.system_powerdown(d));
    let sub = qmp.subscribe_filtered(tick.clone());
    check("tick", d, &qmp.execute_command(&Command::bare("tick")));
    check("EventSubscription::recv_timeout", d, &sub.recv_timeout(d));
    // wait_event subscribes itself: keep ticking until it returns.
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let _ = qmp.execute_with_timeout(&Command::bare("tick"), Duration::from_secs(5));
            }
        });
        check("wait_event", d, &qmp.wait_event(&tick, d));
        stop.store(true, Ordering::SeqCst);
    });
    drop(qmp);
    server.join();
}

#[cfg(feature = "tokio")]
async fn async_calls(d: Duration) {
    use hvarch_qmp::AsyncQmp;
    let config = Config {
        command_timeout: d,
        greeting_timeout: d,
        ..Config::default()
    };
    let (client, server) = responsive();
    let qmp = AsyncQmp::from_std(client, &config).await;
    check("AsyncQmp::from_std", d, &qmp);
    let Ok(qmp) = qmp else {
        server.join();
        return;
    };
    let status = qmp.execute(&hvarch_qmp::qapi_qmp::query_status {}).await;
    check("execute", d, &status);
    let x = qmp.execute_with_timeout(&Command::bare("x"), d).await;
    check("execute_with_timeout", d, &x);
    let tick = EventFilter::name("TICK");
    let both = qmp
        .execute_and_wait_event(&Command::bare("tick"), &tick, d)
        .await;
    check("execute_and_wait_event", d, &both);
    check("device_del", d, &qmp.device_del("disk0", d).await);
    check("system_powerdown", d, &qmp.system_powerdown(d).await);
    let mut sub = qmp.subscribe_filtered(tick.clone());
    check(
        "tick",
        d,
        &qmp.execute_command(&Command::bare("tick")).await,
    );
    check(
        "AsyncEventSubscription::recv_timeout",
        d,
        &sub.recv_timeout(d).await,
    );
    let ticker = async {
        loop {
            let _ = qmp
                .execute_with_timeout(&Command::bare("tick"), Duration::from_secs(5))
                .await;
            tokio::task::yield_now().await;
        }
    };
    tokio::select! {
        waited = qmp.wait_event(&tick, d) => check("wait_event", d, &waited),
        _ = ticker => unreachable!("the ticker never ends"),
    }
    qmp.close().await;
    server.join();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn blocking_client_accepts_any_duration(d in duration()) {
        blocking_calls(d);
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn async_client_accepts_any_duration(d in duration()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async_calls(d));
    }
}

#[test]
fn the_extremes_are_covered() {
    // The named extremes run in every test run, whatever proptest samples.
    for d in [
        Duration::MAX,
        Duration::ZERO,
        Duration::from_nanos(1),
        Duration::from_secs(u64::MAX),
        Duration::new(u64::MAX, 999_999_999),
    ] {
        blocking_calls(d);
        #[cfg(feature = "tokio")]
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async_calls(d));
    }
}

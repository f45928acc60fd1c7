//! The save, restore and wait-for-migration engines against a fake QEMU: the exact command
//! sequences (names and arguments: capabilities, the file channel), a failed or timed-out
//! save cancelled with the guest left as it was, QEMU going away, and timeouts at the edges of
//! `Duration`. Every scenario runs on the engine alone and once per driver (see `support`).

mod support;

use std::path::Path;
use std::time::Duration;

use hvarch::engine::Driver;
use hvarch::hvarch_arch::arch::MigrationCapability;
use hvarch::lifecycle::{wait, Migration};
use hvarch::VmError;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestRunner};
use serde_json::{json, Value};
use support::{durations, scenarios, Answer};

fn ignore_shared() -> Vec<MigrationCapability> {
    vec![MigrationCapability {
        capability: "x-ignore-shared".into(),
        state: true,
    }]
}

fn channels(path: &str) -> Value {
    json!([{"channel-type": "main", "addr": {
        "transport": "file", "filename": path, "offset": 0}}])
}

/// Answers `query-migrate` with `statuses` in turn (the last one forever), `query-status`
/// with `running` (then `after_cancel` once `migrate_cancel` came), everything else `{}`.
fn migration(
    statuses: &'static [&'static str],
    running: &'static str,
    after_cancel: &'static str,
) -> impl FnMut(&str, &Value, usize) -> Answer {
    let (mut polls, mut cancelled) = (0, false);
    move |name, _args, _n| match name {
        "query-migrate" => {
            let status = statuses[polls.min(statuses.len() - 1)];
            polls += 1;
            Answer::Ok(json!({"status": status}))
        }
        "query-status" if cancelled => Answer::Ok(json!({"status": after_cancel})),
        "query-status" => Answer::Ok(json!({"status": running})),
        "migrate_cancel" => {
            cancelled = true;
            Answer::Ok(json!({}))
        }
        _ => Answer::Ok(json!({})),
    }
}

/// Like [`migration`], but the cancel ends the migration: `query-migrate` says `cancelling`
/// once, then `cancelled`.
fn cancellable(
    running: &'static str,
    after_cancel: &'static str,
) -> impl FnMut(&str, &Value, usize) -> Answer {
    let mut inner = migration(&["active"], running, after_cancel);
    let mut after = 0;
    let mut cancelled = false;
    move |name, args, n| match name {
        "migrate_cancel" => {
            cancelled = true;
            inner(name, args, n)
        }
        "query-migrate" if cancelled => {
            after += 1;
            let status = if after == 1 {
                "cancelling"
            } else {
                "cancelled"
            };
            Answer::Ok(json!({"status": status}))
        }
        _ => inner(name, args, n),
    }
}

const SHORT: Duration = Duration::from_millis(150);
const LONG: Duration = Duration::from_secs(5);

fn migration_error(result: Result<(), VmError>) -> String {
    match result {
        Err(VmError::Migration { reason }) => reason,
        other => panic!("expected a migration error, got {other:?}"),
    }
}

scenarios! {
    fn save_notes_the_run_state_sets_capabilities_then_migrates_to_the_file_and_waits() {
        let rule = migration(&["setup", "active", "completed"], "paused", "-");
        let (mut fake, log) = Fake::logged(rule);
        let path = Path::new("/state/vm,offset=1.img");
        let engine = Migration::new(path, &ignore_shared(), LONG).save();
        finish(fake.driver().run(engine)).expect("save");
        assert_eq!(
            log.take(),
            [
                ("query-status".into(), json!({})),
                (
                    "migrate-set-capabilities".into(),
                    json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
                ),
                ("migrate".into(), json!({"channels": channels("/state/vm,offset=1.img")})),
                ("query-migrate".into(), json!({})),
                ("query-migrate".into(), json!({})),
                ("query-migrate".into(), json!({})),
            ]
        );
    }

    fn no_capabilities_means_no_set_capabilities_command() {
        let (mut fake, log) = Fake::logged(migration(&["completed"], "running", "-"));
        let engine = Migration::new(Path::new("/s"), &[], LONG).restore();
        finish(fake.driver().run(engine)).expect("restore");
        assert_eq!(
            log.take(),
            [
                (
                    "migrate-incoming".into(),
                    json!({"channels": channels("/s"), "exit-on-error": false})
                ),
                ("query-migrate".into(), json!({})),
            ]
        );
    }

    fn restore_sets_the_same_capabilities_before_migrate_incoming() {
        let (mut fake, log) = Fake::logged(migration(&["active", "completed"], "running", "-"));
        let path = Path::new("/var/lib/hvarch/vm 1,x.state");
        let engine = Migration::new(path, &ignore_shared(), LONG).restore();
        finish(fake.driver().run(engine)).expect("restore");
        assert_eq!(
            log.take(),
            [
                (
                    "migrate-set-capabilities".into(),
                    json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
                ),
                (
                    "migrate-incoming".into(),
                    json!({"channels": channels("/var/lib/hvarch/vm 1,x.state"),
                           "exit-on-error": false})
                ),
                ("query-migrate".into(), json!({})),
                ("query-migrate".into(), json!({})),
            ]
        );
    }

    fn a_failed_migration_reports_qemus_reason_and_is_cancelled() {
        let mut fake = Fake::new(|name: &str, _args: &Value, _| match name {
            "query-migrate" => Answer::Ok(
                json!({"status": "failed", "error-desc": "Failed to write: No space left"}),
            ),
            "query-status" => Answer::Ok(json!({"status": "running"})),
            _ => Answer::Ok(json!({})),
        });
        let log = fake.log();
        let result = finish(fake.driver().run(Migration::new(Path::new("/s"), &[], LONG).save()));
        assert!(migration_error(result).contains("No space left"));
        // QEMU resumed the guest itself: no cont.
        assert_eq!(
            log.names(),
            [
                "query-status",
                "migrate",
                "query-migrate",
                "migrate_cancel",
                "query-migrate",
                "query-status"
            ]
        );
    }

    fn a_save_that_times_out_is_cancelled_and_the_guest_left_as_it_was() {
        // A running guest QEMU left stopped is resumed; a paused guest stays paused.
        let after = ["query-status", "migrate", "query-migrate", "migrate_cancel", "query-migrate"];
        for (before, left, tail) in [
            ("running", "postmigrate", &["query-status", "cont"][..]),
            ("paused", "paused", &[][..]),
        ] {
            let (mut fake, log) = Fake::logged(cancellable(before, left));
            let engine = Migration::new(Path::new("/s"), &[], SHORT).save();
            let result = finish(fake.driver().run(engine));
            let reason = migration_error(result);
            assert!(reason.contains("not completed within"), "{reason}");
            assert!(reason.contains("last status: active"), "{reason}");
            let mut expected = after.to_vec();
            expected.extend(tail);
            assert_eq!(log.runs(), expected, "a {before} guest");
        }
    }

    fn a_migrate_or_query_migrate_that_times_out_is_cancelled() {
        for slow in ["migrate", "query-migrate"] {
            let mut cancellable = cancellable("running", "running");
            let mut answered = false;
            let rule = move |name: &str, args: &Value, n: usize| {
                if name == slow && !answered {
                    answered = true;
                    return Answer::NoReply;
                }
                cancellable(name, args, n)
            };
            let mut fake = Fake::with_timeout(rule, SHORT);
            let log = fake.log();
            let engine = Migration::new(Path::new("/s"), &[], SHORT).save();
            let result = finish(fake.driver().run(engine));
            assert!(
                matches!(result, Err(VmError::Qmp(hvarch_qmp::Error::Timeout { .. }))),
                "{result:?}"
            );
            let mut expected = vec!["query-status", "migrate"];
            if slow == "query-migrate" {
                expected.push("query-migrate");
            }
            // Still running: no cont.
            expected.extend(["migrate_cancel", "query-migrate", "query-status"]);
            assert_eq!(log.runs(), expected, "{slow} timed out");
        }
    }

    fn a_migration_completing_while_it_is_cancelled_is_a_save() {
        let mut cancels = 0;
        let mut inner = migration(&["active"], "running", "postmigrate");
        let rule = move |name: &str, args: &Value, n: usize| match name {
            "migrate_cancel" => {
                cancels += 1;
                inner(name, args, n)
            }
            "query-migrate" if cancels > 0 => Answer::Ok(json!({"status": "completed"})),
            _ => inner(name, args, n),
        };
        let (mut fake, log) = Fake::logged(rule);
        let engine = Migration::new(Path::new("/s"), &[], SHORT).save();
        finish(fake.driver().run(engine)).expect("completed");
        assert_eq!(
            log.runs(),
            ["query-status", "migrate", "query-migrate", "migrate_cancel", "query-migrate"]
        );
    }

    fn a_refused_migrate_starts_nothing_to_cancel() {
        let mut fake = Fake::new(|name: &str, _args: &Value, _| match name {
            "migrate" => Answer::Refuse("There's a migration process in progress"),
            _ => Answer::Ok(json!({"status": "running"})),
        });
        let log = fake.log();
        let result = finish(fake.driver().run(Migration::new(Path::new("/s"), &[], LONG).save()));
        assert!(matches!(result, Err(VmError::Qmp(hvarch_qmp::Error::Command { .. }))));
        assert_eq!(log.names(), ["query-status", "migrate"]);
    }

    fn qemu_going_away_mid_wait_is_a_disconnect() {
        let mut polls = 0;
        let mut fake = Fake::new(move |name: &str, _args: &Value, _| match name {
            "query-migrate" => {
                polls += 1;
                if polls == 1 {
                    Answer::Ok(json!({"status": "active"}))
                } else {
                    Answer::HangUp
                }
            }
            _ => Answer::Ok(json!({"status": "running"})),
        });
        let log = fake.log();
        let result = finish(fake.driver().run(Migration::new(Path::new("/s"), &[], LONG).save()));
        assert!(
            matches!(result, Err(VmError::Qmp(hvarch_qmp::Error::Disconnected))),
            "{result:?}"
        );
        // Nothing left to cancel on a closed connection.
        assert_eq!(log.names(), ["query-status", "migrate", "query-migrate", "query-migrate"]);
    }

    fn wait_reports_a_cancelled_migration() {
        let (mut fake, log) = Fake::logged(migration(&["active", "cancelling"], "running", "-"));
        let reason = migration_error(finish(fake.driver().run(wait(LONG))));
        assert!(reason.contains("being cancelled"), "{reason}");
        assert_eq!(log.names(), ["query-migrate", "query-migrate"]);
    }

    fn no_migration_timeout_panics() {
        let mut runner = TestRunner::new(ProptestConfig::with_cases(12));
        runner
            .run(&durations(), |timeout| {
                let mut fake = Fake::new(migration(&["completed"], "running", "-"));
                let path = Path::new("/s");
                let engine = Migration::new(path, &[], timeout).save();
                prop_assert!(finish(fake.driver().run(engine)).is_ok());
                let engine = Migration::new(path, &[], timeout).restore();
                prop_assert!(finish(fake.driver().run(engine)).is_ok());
                prop_assert!(finish(fake.driver().run(wait(timeout))).is_ok());
                Ok(())
            })
            .unwrap();
    }
}

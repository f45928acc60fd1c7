//! The save, restore and wait-for-migration sequences as engine flows (see
//! [`crate::engine`]): written once, run by [`crate::Vm`] with the blocking driver and by any
//! other driver the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use hvarch_arch::arch::MigrationCapability;
use hvarch_qmp::{commands, Command};
use serde_json::{json, Value};

use crate::engine::{deadline, remaining, Engine, Port};
use crate::vm::{VmError, VmResult};

/// How often `query-migrate` is polled while waiting for a migration (Kata: 100 ms; a
/// paused VM's save takes tens of milliseconds, so hvarch polls more often).
pub const MIGRATION_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The least time one `query-migrate` is given, even when the migration deadline is closer.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a cancelled save waits for QEMU to end the migration (`migrate_cancel` only
/// starts it; QEMU may still be writing the file until it reports `cancelled`).
pub const MIGRATION_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// A migration to or from a file: its path (absolute; see [`crate::lifecycle`]), the
/// migration capabilities to set first (the same on both sides; none sends no
/// `migrate-set-capabilities`), and how long to wait for it. [`Migration::save`] and
/// [`Migration::restore`] are its sequences as engines.
#[derive(Clone, Debug)]
pub struct Migration {
    path: PathBuf,
    capabilities: Vec<MigrationCapability>,
    timeout: Duration,
}

impl Migration {
    /// A migration of the file at `path`, with `capabilities`, waited for at most `timeout`
    /// (a timeout too long for a deadline is none).
    pub fn new(path: &Path, capabilities: &[MigrationCapability], timeout: Duration) -> Self {
        Migration {
            path: path.to_owned(),
            capabilities: capabilities.to_vec(),
            timeout,
        }
    }

    /// The save sequence: `query-status` (the run state to keep if the save fails),
    /// `migrate-set-capabilities`, `migrate` to the file, then `query-migrate` every
    /// [`MIGRATION_POLL_INTERVAL`] until `completed`, for at most the timeout.
    ///
    /// A save that fails or does not complete in time (`migrate` or `query-migrate` timing
    /// out included) is cancelled: `migrate_cancel`, `query-migrate` until QEMU ended the
    /// migration (at most [`MIGRATION_CANCEL_TIMEOUT`]), then, if the guest was running and
    /// QEMU left it stopped, `cont`. A migration that completes while it is being cancelled
    /// is a completed save. Nothing is cancelled when QEMU went away
    /// ([`hvarch_qmp::Error::Disconnected`]).
    pub fn save(self) -> Engine<'static, VmResult<()>> {
        Engine::new(move |port| async move { self.save_flow(&port).await })
    }

    /// The restore sequence on a QEMU started with `-incoming defer`:
    /// `migrate-set-capabilities`, `migrate-incoming` from the file, then the wait of
    /// [`wait`].
    pub fn restore(self) -> Engine<'static, VmResult<()>> {
        Engine::new(move |port| async move { self.restore_flow(&port).await })
    }

    async fn save_flow(&self, port: &Port) -> VmResult<()> {
        let was_running = run_state(port).await? == "running";
        set_capabilities(port, &self.capabilities).await?;
        let result = match port.execute(migrate_command(&self.path)).await {
            Ok(_) => wait_flow(port, self.timeout).await,
            // Refused: no migration was started.
            Err(e @ hvarch_qmp::Error::Command { .. }) => return Err(e.into()),
            Err(e) => Err(e.into()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(VmError::Qmp(hvarch_qmp::Error::Disconnected)) => result,
            Err(error) => {
                tracing::warn!(%error, "save failed; cancelling the migration");
                if cancel(port).await == Some(Progress::Completed) {
                    tracing::info!("the migration completed while it was being cancelled");
                    return Ok(());
                }
                if was_running {
                    resume_if_stopped(port).await;
                }
                Err(error)
            }
        }
    }

    async fn restore_flow(&self, port: &Port) -> VmResult<()> {
        set_capabilities(port, &self.capabilities).await?;
        port.execute(migrate_incoming_command(&self.path)).await?;
        wait_flow(port, self.timeout).await
    }
}

/// Waits until `query-migrate` reports `completed`, polling every
/// [`MIGRATION_POLL_INTERVAL`], for at most `timeout` (Kata's `waitMigration`); a `failed` or
/// `cancelled` migration is a [`VmError::Migration`] with QEMU's `error-desc`.
pub fn wait(timeout: Duration) -> Engine<'static, VmResult<()>> {
    Engine::new(move |port| async move { wait_flow(&port, timeout).await })
}

/// The `channels` argument naming `path` as a `file` transport.
fn file_channels(path: &Path) -> Value {
    json!([{
        "channel-type": "main",
        "addr": {"transport": "file", "filename": path.to_string_lossy(), "offset": 0},
    }])
}

/// `migrate` to the file at `path`.
fn migrate_command(path: &Path) -> Command {
    Command::new("migrate", json!({"channels": file_channels(path)}))
}

/// `migrate-incoming` from the file at `path`; QEMU stays alive if the load fails.
fn migrate_incoming_command(path: &Path) -> Command {
    Command::new(
        "migrate-incoming",
        json!({"channels": file_channels(path), "exit-on-error": false}),
    )
}

/// Sets `capabilities`; sends nothing when there are none (arm64).
async fn set_capabilities(port: &Port, capabilities: &[MigrationCapability]) -> VmResult<()> {
    if capabilities.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(&str, bool)> = capabilities
        .iter()
        .map(|c| (c.capability.as_str(), c.state))
        .collect();
    port.execute(commands::migrate_set_capabilities(&pairs))
        .await?;
    Ok(())
}

/// QEMU's run state (`query-status`).
async fn run_state(port: &Port) -> VmResult<String> {
    let reply = port.execute(commands::query_status()).await?;
    Ok(reply
        .get("status")
        .and_then(Value::as_str)
        .unwrap_or("unknown")
        .to_owned())
}

/// `migrate_cancel`, then `query-migrate` until the migration ended; returns how it ended
/// (`None`: unknown).
async fn cancel(port: &Port) -> Option<Progress> {
    let cancel = Command::bare("migrate_cancel");
    if let Err(e) = port
        .execute_within(cancel, Some(MIGRATION_CANCEL_TIMEOUT))
        .await
    {
        tracing::warn!(error = %e, "migrate_cancel failed");
    }
    let until = deadline(port.now(), MIGRATION_CANCEL_TIMEOUT);
    loop {
        let query = commands::query_migrate();
        let timeout = remaining(until, port.now()).max(MIN_QUERY_TIMEOUT);
        let progress = match port.execute_within(query, Some(timeout)).await {
            Ok(info) => progress(&info),
            Err(e) => {
                tracing::warn!(error = %e, "query-migrate failed while cancelling");
                return None;
            }
        };
        if !matches!(progress, Progress::Pending(_)) {
            return Some(progress);
        }
        let left = remaining(until, port.now());
        if left.is_zero() {
            tracing::warn!("the migration did not end within {MIGRATION_CANCEL_TIMEOUT:?}");
            return None;
        }
        port.sleep(MIGRATION_POLL_INTERVAL.min(left)).await;
    }
}

/// `cont` if QEMU left the guest stopped (a migration stops it to finish).
async fn resume_if_stopped(port: &Port) {
    match run_state(port).await {
        Ok(status) if status == "running" => {}
        Ok(status) => {
            tracing::info!(%status, "resuming the guest the failed save left stopped");
            if let Err(e) = port.execute(commands::cont()).await {
                tracing::warn!(error = %e, "cont after a failed save failed");
            }
        }
        Err(e) => tracing::warn!(error = %e, "query-status after a failed save failed"),
    }
}

/// Where a migration stands, from a `query-migrate` reply.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    Completed,
    Failed(String),
    Pending(String),
}

pub(crate) fn progress(info: &Value) -> Progress {
    let status = info.get("status").and_then(Value::as_str).unwrap_or("none");
    match status {
        "completed" => Progress::Completed,
        "failed" | "cancelled" => {
            let desc = info
                .get("error-desc")
                .and_then(Value::as_str)
                .unwrap_or("QEMU gave no reason");
            Progress::Failed(format!("status {status}: {desc}"))
        }
        other => Progress::Pending(other.to_owned()),
    }
}

async fn wait_flow(port: &Port, timeout: Duration) -> VmResult<()> {
    let started = port.now();
    let until = deadline(started, timeout);
    loop {
        let query = commands::query_migrate();
        let query_timeout = remaining(until, port.now()).max(MIN_QUERY_TIMEOUT);
        let info = port.execute_within(query, Some(query_timeout)).await?;
        match progress(&info) {
            Progress::Completed => {
                let elapsed = port.now().saturating_duration_since(started);
                tracing::debug!(?elapsed, "migration completed");
                return Ok(());
            }
            Progress::Failed(reason) => return Err(VmError::Migration { reason }),
            Progress::Pending(status) if status == "cancelling" => {
                return Err(VmError::Migration {
                    reason: "status cancelling: the migration is being cancelled".into(),
                })
            }
            Progress::Pending(status) => {
                let left = remaining(until, port.now());
                if left.is_zero() {
                    return Err(VmError::Migration {
                        reason: format!("not completed within {timeout:?} (last status: {status})"),
                    });
                }
                port.sleep(MIGRATION_POLL_INTERVAL.min(left)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reads_query_migrate() {
        assert_eq!(
            progress(&json!({"status": "completed"})),
            Progress::Completed
        );
        assert_eq!(progress(&json!({})), Progress::Pending("none".into()));
        assert_eq!(
            progress(&json!({"status": "cancelled"})),
            Progress::Failed("status cancelled: QEMU gave no reason".into())
        );
        assert_eq!(
            progress(&json!({"status": "cancelling"})),
            Progress::Pending("cancelling".into())
        );
    }
}

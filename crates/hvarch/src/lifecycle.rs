//! Saving a VM to a file and restoring it into a new [`Vm`]: Kata's `saveSandbox` and
//! `bootFromTemplate` (kata-go.md §4.6), over QEMU's `file` migration transport.
//!
//! # Save
//!
//! [`Vm::save`] sets the migration capabilities the arch backend asks for
//! ([`QemuArch::migration_capabilities`]: none on arm64, `x-ignore-shared` elsewhere; no
//! `migrate-set-capabilities` at all when there are none), sends `migrate` to the file and
//! polls `query-migrate` until it reports `completed`, for at most the backend's
//! [`QemuArch::migration_wait_timeout`] (arm64 10 s, others 5 s). A save that fails or times
//! out is cancelled (`migrate_cancel`) and its partial file removed. The VM may be paused
//! or running; either way QEMU stops its vCPUs to finish, and the saved VM is left in the
//! `postmigrate` state: shut it down, or [`Vm::resume`] it.
//!
//! # Restore
//!
//! [`Vm::restore`] launches an assembled VM with `-incoming defer`, sets the same
//! capabilities on the new QEMU (they must match on both sides), sends `migrate-incoming`
//! from the file and waits the same way. The assembled VM must describe the machine and the
//! cold-plugged devices of the saved one (assemble the same spec, with its own runtime
//! directory); devices hot-plugged into the saved VM are recreated from the hotplug state
//! file (below). The restored VM
//! keeps the run state it was saved in (`prelaunch` or `paused` stays so) unless the assembled
//! VM is not `stopped` and the saved one was running. A restore that fails returns the error
//! and leaves no process behind: the new QEMU is killed, reaped and its runtime directory
//! removed.
//!
//! # Hot-plugged devices
//!
//! QEMU's migration needs the destination started with the same devices at the same bus and
//! address. [`Vm::save`] therefore also writes the VM's hotplug state, after the migration
//! completed, to [`hotplug_state_path`] (`<path>.hotplug.json`, mode 0600; the format is
//! [`SavedHotplug`]'s): the arch backend's bridge slots and the [`HotplugState`], each
//! hot-plugged device with its final bus and address. It is written on every save, even with
//! nothing hot-plugged, so a stale one never survives; a save that fails removes both files.
//! A VM with a hot-plugged device owning file descriptors (a tap network device) is refused
//! before anything is migrated ([`HotplugError::OwnedFds`] in a [`VmError::Hotplug`]).
//!
//! [`Vm::restore`] reads the file when it is present ([`SavedHotplug::apply`]): the devices
//! are appended to the assembled configuration as cold-plugged devices (same ids, bus and
//! address, in plug order), the bridges with their occupied slots go to the arch backend,
//! and the restored [`Vm`] starts with the saved [`HotplugState`], so
//! [`Vm::hotplug`]`().unplug(…)` knows its devices. On the destination those devices are
//! cold-plugged, but their PCIe slots' hotplug state comes with the migration stream: a
//! device the source could have released at once (its guest never ran) is released at once
//! on the restored VM too (seen on QEMU 10.0.2, arm64 `virt`, root port); otherwise the
//! unplug needs the guest's cooperation, as on the source.
//!
//! [`HotplugState`]: crate::hotplug::HotplugState
//! [`HotplugError::OwnedFds`]: crate::hotplug::HotplugError::OwnedFds
//!
//! # Paths
//!
//! The file is named through QMP's `channels` argument
//! (`{"transport": "file", "filename": …}`), not a `file:` URI, so a path needs no escaping
//! (QEMU cuts a URI at `,offset=`). Relative paths are made absolute against this process's
//! working directory, since QEMU opens the file itself. QEMU creates the file with mode 0600.
//! This needs QEMU ≥ 9.1 (`file` channels, and `exit-on-error: false` on `migrate-incoming`,
//! which keeps a destination whose load failed alive long enough to report why).
//!
//! [`QemuArch::migration_capabilities`]: crate::QemuArch::migration_capabilities
//! [`QemuArch::migration_wait_timeout`]: crate::QemuArch::migration_wait_timeout
//!
//! ```no_run
//! use std::time::Duration;
//! use hvarch::{assemble, LaunchOptions, Vm, VmSpec};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = VmSpec::kata_default();
//! let mut vm = Vm::launch(assemble(&spec)?, LaunchOptions::default())?;
//! vm.pause()?;
//! vm.save("/var/lib/hvarch/default.state")?;
//! vm.shutdown(Duration::from_secs(1))?;
//!
//! let restored = Vm::restore(
//!     assemble(&spec)?,
//!     "/var/lib/hvarch/default.state",
//!     LaunchOptions::default(),
//! )?;
//! assert_eq!(restored.status()?, "paused");
//! # Ok(())
//! # }
//! ```

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hvarch_arch::arch::MigrationCapability;
use hvarch_devices::config::Incoming;
use hvarch_qmp::{commands, Command, Qmp};
use serde_json::{json, Value};

use crate::assemble::Assembled;
use crate::hotplug::SavedHotplug;
use crate::vm::{LaunchOptions, Vm, VmError, VmResult};

/// How often `query-migrate` is polled while waiting for a migration (Kata: 100 ms; a
/// paused VM's save takes tens of milliseconds, so hvarch polls more often).
pub const MIGRATION_POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The least time one `query-migrate` is given, even when the migration deadline is closer.
const MIN_QUERY_TIMEOUT: Duration = Duration::from_secs(1);

/// Where [`Vm::save`] writes the hotplug state of a VM saved to `state`:
/// `<state>.hotplug.json` (see the [module docs](crate::lifecycle)).
pub fn hotplug_state_path(state: &Path) -> PathBuf {
    let mut name = OsString::from(state.as_os_str());
    name.push(".hotplug.json");
    PathBuf::from(name)
}

/// Writes `text` to `path` (created or truncated), mode 0600.
fn write_private(path: &Path, text: &str) -> VmResult<()> {
    let io = |what: &str| {
        let what = format!("{what} {}", path.display());
        move |source| VmError::Io { what, source }
    };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create"))?;
    // An existing file keeps its mode through `open`.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io("chmod 0600"))?;
    file.write_all(text.as_bytes()).map_err(io("write"))?;
    file.sync_all().map_err(io("sync"))
}

/// Reads the hotplug state saved with `state`, if there is one.
fn read_saved_hotplug(state: &Path) -> VmResult<Option<SavedHotplug>> {
    let path = hotplug_state_path(state);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(SavedHotplug::from_json(&text)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(VmError::Io {
            what: format!("read {}", path.display()),
            source,
        }),
    }
}

/// Where a file is written before it is renamed to `path`: `.<name>.partial` beside it.
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

fn rename(from: &Path, to: &Path) -> VmResult<()> {
    std::fs::rename(from, to).map_err(|source| VmError::Io {
        what: format!("rename {} to {}", from.display(), to.display()),
        source,
    })
}

impl Vm {
    /// Saves the VM's state to `path` (created or truncated; see the [module
    /// docs](crate::lifecycle)): capabilities, `migrate`, then a wait of at most the arch's
    /// migration timeout, then the hotplug state written to [`hotplug_state_path`]. Afterwards
    /// the VM is in the `postmigrate` state.
    ///
    /// Errors: [`VmError::Hotplug`] (before anything is migrated) when a hot-plugged device
    /// owns file descriptors; [`VmError::Migration`] when QEMU reports the migration failed
    /// or it does not complete in time, [`VmError::Qmp`] when a command is refused or QEMU
    /// goes away ([`hvarch_qmp::Error::Disconnected`]), [`VmError::Io`] when the hotplug
    /// state cannot be written. The state is written to temporary files next to `path` and
    /// renamed into place only when complete, so a failed save leaves an earlier snapshot at
    /// `path` untouched and no partial file behind.
    pub fn save(&self, path: impl AsRef<Path>) -> VmResult<()> {
        let path = absolute(path.as_ref())?;
        let hotplug = SavedHotplug::capture(self.hotplug_state(), self.arch())?.to_json()?;
        let hotplug_path = hotplug_state_path(&path);
        let partial = partial_path(&path);
        let partial_hotplug = partial_path(&hotplug_path);
        let result = save_with(
            self.qmp(),
            &partial,
            &self.arch().migration_capabilities(),
            self.arch().migration_wait_timeout(),
        )
        .and_then(|()| write_private(&partial_hotplug, &hotplug))
        .and_then(|()| rename(&partial_hotplug, &hotplug_path))
        .and_then(|()| rename(&partial, &path));
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
            let _ = std::fs::remove_file(&partial_hotplug);
        }
        result
    }

    /// Launches `assembled` with `-incoming defer` and loads the state saved at `path` into
    /// it (see the [module docs](crate::lifecycle)); returns once the load completed.
    ///
    /// When [`Vm::save`] left a hotplug state next to `path` ([`hotplug_state_path`]), its
    /// devices are cold-plugged into `assembled` and its bridges given to the arch backend
    /// before the launch, and the restored VM carries its [`HotplugState`]; a state that does
    /// not fit `assembled` is a [`VmError::Hotplug`] and nothing is launched.
    ///
    /// Any `incoming` the assembled configuration had is replaced. On error the new QEMU is
    /// killed and reaped and its runtime directory removed; a failed load is a
    /// [`VmError::Migration`] carrying QEMU's reason.
    ///
    /// [`HotplugState`]: crate::hotplug::HotplugState
    pub fn restore(
        mut assembled: Assembled,
        path: impl AsRef<Path>,
        options: LaunchOptions,
    ) -> VmResult<Vm> {
        let path = absolute(path.as_ref())?;
        if !path.is_file() {
            return Err(VmError::Migration {
                reason: format!("no saved state at {}", path.display()),
            });
        }
        let hotplug = read_saved_hotplug(&path)?
            .map(|saved| saved.apply(&mut assembled))
            .transpose()?;
        assembled.config.incoming = Some(Incoming::Defer);
        // Dropped (killed, reaped, cleaned) if anything below fails.
        let mut vm = Vm::launch(assembled, options)?;
        if let Some(state) = hotplug {
            vm.set_hotplug_state(state);
        }
        restore_with(
            vm.qmp(),
            &path,
            &vm.arch().migration_capabilities(),
            vm.arch().migration_wait_timeout(),
        )
        .map_err(|e| with_stderr(e, &vm.stderr()))?;
        Ok(vm)
    }

    /// Waits until `query-migrate` reports `completed`, for at most `timeout` (Kata's
    /// `waitMigration`); a `failed` or `cancelled` migration is a [`VmError::Migration`] with
    /// QEMU's `error-desc`. [`Vm::save`] and [`Vm::restore`] call it with the arch's
    /// [`QemuArch::migration_wait_timeout`](crate::QemuArch::migration_wait_timeout).
    pub fn wait_migration(&self, timeout: Duration) -> VmResult<()> {
        wait_migration(self.qmp(), timeout)
    }
}

/// `path`, absolute and valid UTF-8 (QMP strings are UTF-8).
fn absolute(path: &Path) -> VmResult<PathBuf> {
    let absolute = std::path::absolute(path).map_err(|source| VmError::Io {
        what: format!("make {} absolute", path.display()),
        source,
    })?;
    if absolute.to_str().is_none() {
        return Err(VmError::Migration {
            reason: format!("{} is not valid UTF-8", absolute.display()),
        });
    }
    Ok(absolute)
}

/// The `channels` argument naming `path` as a `file` transport.
fn file_channels(path: &Path) -> Value {
    json!([{
        "channel-type": "main",
        "addr": {"transport": "file", "filename": path.to_string_lossy(), "offset": 0},
    }])
}

/// `migrate` to the file at `path`.
pub(crate) fn migrate_command(path: &Path) -> Command {
    Command::new("migrate", json!({"channels": file_channels(path)}))
}

/// `migrate-incoming` from the file at `path`; QEMU stays alive if the load fails.
pub(crate) fn migrate_incoming_command(path: &Path) -> Command {
    Command::new(
        "migrate-incoming",
        json!({"channels": file_channels(path), "exit-on-error": false}),
    )
}

/// Sets `capabilities`; sends nothing when there are none (arm64).
pub(crate) fn set_capabilities(qmp: &Qmp, capabilities: &[MigrationCapability]) -> VmResult<()> {
    if capabilities.is_empty() {
        return Ok(());
    }
    let pairs: Vec<(&str, bool)> = capabilities
        .iter()
        .map(|c| (c.capability.as_str(), c.state))
        .collect();
    qmp.execute_command(&commands::migrate_set_capabilities(&pairs))?;
    Ok(())
}

/// The save sequence on `qmp`; cancels the migration if it fails or times out.
pub(crate) fn save_with(
    qmp: &Qmp,
    path: &Path,
    capabilities: &[MigrationCapability],
    timeout: Duration,
) -> VmResult<()> {
    set_capabilities(qmp, capabilities)?;
    qmp.execute_command(&migrate_command(path))?;
    let result = wait_migration(qmp, timeout);
    if matches!(result, Err(VmError::Migration { .. })) {
        // Best effort: a timed-out migration would otherwise keep the VM stopped and writing.
        let _ = qmp.execute_with_timeout(&Command::bare("migrate_cancel"), MIN_QUERY_TIMEOUT);
    }
    result
}

/// The restore sequence on `qmp` (a QEMU started with `-incoming defer`).
pub(crate) fn restore_with(
    qmp: &Qmp,
    path: &Path,
    capabilities: &[MigrationCapability],
    timeout: Duration,
) -> VmResult<()> {
    set_capabilities(qmp, capabilities)?;
    qmp.execute_command(&migrate_incoming_command(path))?;
    wait_migration(qmp, timeout)
}

/// Where a migration stands, from a `query-migrate` reply.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    Completed,
    Failed(String),
    Pending(String),
}

fn progress(info: &Value) -> Progress {
    let status = info.get("status").and_then(Value::as_str).unwrap_or("none");
    match status {
        "completed" => Progress::Completed,
        "failed" | "cancelled" | "cancelling" => {
            let desc = info
                .get("error-desc")
                .and_then(Value::as_str)
                .unwrap_or("QEMU gave no reason");
            Progress::Failed(format!("status {status}: {desc}"))
        }
        other => Progress::Pending(other.to_owned()),
    }
}

pub(crate) fn wait_migration(qmp: &Qmp, timeout: Duration) -> VmResult<()> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let info =
            qmp.execute_with_timeout(&commands::query_migrate(), remaining.max(MIN_QUERY_TIMEOUT))?;
        match progress(&info) {
            Progress::Completed => {
                tracing::debug!(elapsed = ?started.elapsed(), "migration completed");
                return Ok(());
            }
            Progress::Failed(reason) => return Err(VmError::Migration { reason }),
            Progress::Pending(status) => {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if remaining.is_zero() {
                    return Err(VmError::Migration {
                        reason: format!("not completed within {timeout:?} (last status: {status})"),
                    });
                }
                std::thread::sleep(MIGRATION_POLL_INTERVAL.min(remaining));
            }
        }
    }
}

/// Adds QEMU's stderr to a migration error (the destination often explains a failed load
/// there).
fn with_stderr(error: VmError, stderr: &str) -> VmError {
    let stderr = stderr.trim();
    match error {
        VmError::Migration { reason } if !stderr.is_empty() => VmError::Migration {
            reason: format!("{reason}; QEMU said: {stderr}"),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hvarch_qmp::testing::{FakeConn, FakeServer};

    fn client(script: impl FnOnce(FakeConn) + Send + 'static) -> (Qmp, FakeServer) {
        let (stream, server) = FakeServer::spawn(script).expect("fake server");
        let qmp = Qmp::from_stream(stream, &hvarch_qmp::Config::default()).expect("negotiate");
        (qmp, server)
    }

    fn ignore_shared() -> Vec<MigrationCapability> {
        vec![MigrationCapability {
            capability: "x-ignore-shared".into(),
            state: true,
        }]
    }

    fn reply_status(conn: &mut FakeConn, status: &str) {
        let cmd = conn.expect_command("query-migrate");
        conn.reply(&cmd, json!({"status": status}));
    }

    #[test]
    fn save_sets_capabilities_then_migrates_to_the_file_and_waits() {
        let (qmp, server) = client(|mut conn| {
            conn.handshake();
            let caps = conn.expect_command("migrate-set-capabilities");
            assert_eq!(
                caps["arguments"],
                json!({"capabilities": [{"capability": "x-ignore-shared", "state": true}]})
            );
            conn.reply(&caps, json!({}));
            let migrate = conn.expect_command("migrate");
            assert_eq!(
                migrate["arguments"],
                json!({"channels": [{"channel-type": "main", "addr": {
                    "transport": "file", "filename": "/state/vm,offset=1.img", "offset": 0}}]})
            );
            conn.reply(&migrate, json!({}));
            reply_status(&mut conn, "setup");
            reply_status(&mut conn, "active");
            reply_status(&mut conn, "completed");
            conn.hang_up();
        });
        save_with(
            &qmp,
            Path::new("/state/vm,offset=1.img"),
            &ignore_shared(),
            Duration::from_secs(5),
        )
        .expect("save");
        server.join();
    }

    #[test]
    fn no_capabilities_means_no_set_capabilities_command() {
        let (qmp, server) = client(|mut conn| {
            conn.handshake();
            let incoming = conn.expect_command("migrate-incoming");
            assert_eq!(
                incoming["arguments"],
                json!({"channels": [{"channel-type": "main", "addr": {
                    "transport": "file", "filename": "/s", "offset": 0}}],
                    "exit-on-error": false})
            );
            conn.reply(&incoming, json!({}));
            reply_status(&mut conn, "completed");
            conn.hang_up();
        });
        restore_with(&qmp, Path::new("/s"), &[], Duration::from_secs(10)).expect("restore");
        server.join();
    }

    #[test]
    fn restore_sets_the_same_capabilities_before_migrate_incoming() {
        let (qmp, server) = client(|mut conn| {
            conn.handshake();
            let caps = conn.expect_command("migrate-set-capabilities");
            conn.reply(&caps, json!({}));
            let incoming = conn.expect_command("migrate-incoming");
            conn.reply(&incoming, json!({}));
            reply_status(&mut conn, "active");
            reply_status(&mut conn, "completed");
            conn.hang_up();
        });
        restore_with(
            &qmp,
            Path::new("/s"),
            &ignore_shared(),
            Duration::from_secs(5),
        )
        .expect("restore");
        server.join();
    }

    #[test]
    fn a_failed_migration_reports_qemus_reason_and_is_cancelled() {
        let (qmp, server) = client(|mut conn| {
            conn.handshake();
            let migrate = conn.expect_command("migrate");
            conn.reply(&migrate, json!({}));
            let query = conn.expect_command("query-migrate");
            conn.reply(
                &query,
                json!({"status": "failed", "error-desc": "Failed to write: No space left"}),
            );
            let cancel = conn.expect_command("migrate_cancel");
            conn.reply(&cancel, json!({}));
            conn.hang_up();
        });
        let err = save_with(&qmp, Path::new("/s"), &[], Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(&err, VmError::Migration { reason } if reason.contains("No space left")),
            "{err}"
        );
        server.join();
    }

    #[test]
    fn a_migration_that_never_completes_times_out_and_is_cancelled() {
        let (qmp, server) = client(|mut conn| {
            conn.handshake();
            let migrate = conn.expect_command("migrate");
            conn.reply(&migrate, json!({}));
            loop {
                let cmd = conn.recv().expect("a command");
                if cmd["execute"] == "migrate_cancel" {
                    conn.reply(&cmd, json!({}));
                    break;
                }
                assert_eq!(cmd["execute"], "query-migrate");
                conn.reply(&cmd, json!({"status": "active"}));
            }
            conn.hang_up();
        });
        let started = Instant::now();
        let err = save_with(&qmp, Path::new("/s"), &[], Duration::from_millis(150)).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            matches!(&err, VmError::Migration { reason } if reason.contains("last status: active")),
            "{err}"
        );
        server.join();
    }

    #[test]
    fn qemu_going_away_mid_wait_is_a_disconnect() {
        let (qmp, server) = client(|mut conn| {
            conn.handshake();
            let migrate = conn.expect_command("migrate");
            conn.reply(&migrate, json!({}));
            reply_status(&mut conn, "active");
            let _ = conn.expect_command("query-migrate");
            conn.hang_up();
        });
        let err = save_with(&qmp, Path::new("/s"), &[], Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(err, VmError::Qmp(hvarch_qmp::Error::Disconnected)),
            "{err}"
        );
        server.join();
    }

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
    }

    #[test]
    fn relative_paths_are_made_absolute() {
        let path = absolute(Path::new("state.img")).expect("absolute");
        assert!(path.is_absolute());
        assert!(path.ends_with("state.img"));
    }

    #[test]
    fn migration_errors_carry_stderr() {
        let err = with_stderr(
            VmError::Migration {
                reason: "status failed".into(),
            },
            "qemu: load of migration failed\n",
        );
        assert_eq!(
            err.to_string(),
            "migration failed: status failed; QEMU said: qemu: load of migration failed"
        );
    }
}

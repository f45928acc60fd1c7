//! Saving a VM to a file and restoring it into a new [`Vm`](crate::Vm): Kata's `saveSandbox` and
//! `bootFromTemplate` (kata-go.md §4.6), over QEMU's `file` migration transport.
//!
//! # Save
//!
//! [`Vm::save`](crate::Vm::save) notes the run state (`query-status`), sets the migration capabilities the
//! arch backend asks for ([`QemuArch::migration_capabilities`]: none on arm64,
//! `x-ignore-shared` elsewhere; no `migrate-set-capabilities` at all when there are none),
//! sends `migrate` to the file and polls `query-migrate` until it reports `completed`, for
//! at most the backend's [`QemuArch::migration_wait_timeout`] (arm64 10 s, others 5 s;
//! [`Vm::save_within`](crate::Vm::save_within) takes another). The VM may be paused or running; either way QEMU
//! stops its vCPUs to finish, and the saved VM is left in the `postmigrate` state: shut it
//! down, or [`Vm::resume`](crate::Vm::resume) it.
//!
//! A save that fails or does not complete in time (`migrate` or `query-migrate` timing out
//! included) is cancelled (`migrate_cancel`, then `query-migrate` until QEMU ended the
//! migration), the guest is left as it was before the save (running stays running: `cont`
//! if QEMU stopped it; paused stays paused), and no partial file remains. The sequences are
//! engines ([`Migration::save`], [`Migration::restore`], [`wait`]: see [`crate::engine`]),
//! which any driver runs.
//!
//! # Restore
//!
//! [`Vm::restore`](crate::Vm::restore) launches an assembled VM with `-incoming defer`, sets the same
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
//! address. [`Vm::save`](crate::Vm::save) therefore also writes the VM's hotplug state, after the migration
//! completed, to [`hotplug_state_path`] (`<path>.hotplug.json`, mode 0600; the format is
//! [`SavedHotplug`]'s): the arch backend's bridge slots and the [`HotplugState`], each
//! hot-plugged device with its final bus and address. It is written on every save, even with
//! nothing hot-plugged, so a stale one never survives; a save that fails removes both files.
//! A VM with a hot-plugged device owning file descriptors (a tap network device) is refused
//! before anything is migrated ([`HotplugError::OwnedFds`] in a [`VmError::Hotplug`]).
//!
//! [`Vm::restore`](crate::Vm::restore) reads the file when it is present ([`SavedHotplug::apply`]): the devices
//! are appended to the assembled configuration as cold-plugged devices (same ids, bus and
//! address, in plug order), the bridges with their occupied slots go to the arch backend,
//! and the restored [`Vm`](crate::Vm) starts with the saved [`HotplugState`], so
//! [`Vm::hotplug`](crate::Vm::hotplug)`().unplug(…)` knows its devices. On the destination those devices are
//! cold-plugged, but their PCIe slots' hotplug state comes with the migration stream: a
//! device the source could have released at once (its guest never ran) is released at once
//! on the restored VM too (seen on QEMU 10.0.2, arm64 `virt`, root port); otherwise the
//! unplug needs the guest's cooperation, as on the source.
//!
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
use std::time::Duration;

use hvarch_arch::arch::MigrationCapability;
use hvarch_devices::config::Incoming;

use crate::assemble::Assembled;
use crate::engine::Engine;
use crate::hotplug::{HotplugState, SavedHotplug};
use crate::vm::{VmError, VmResult};
use crate::QemuArch;

mod engine;

pub use engine::{wait, Migration, MIGRATION_CANCEL_TIMEOUT, MIGRATION_POLL_INTERVAL};

/// Where [`Vm::save`](crate::Vm::save) writes the hotplug state of a VM saved to `state`:
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

/// The files of one save: the migration goes to a partial file, the hotplug state is
/// written beside it once the migration completed, and both are renamed into place; a
/// failed save removes both partial files. What any driver does around the
/// [`Migration::save`] engine.
#[derive(Debug)]
pub(crate) struct SaveFiles {
    path: PathBuf,
    partial: PathBuf,
    hotplug: String,
}

impl SaveFiles {
    /// The files for saving a VM with hotplug state `state` and backend `arch` to `path`;
    /// refused before anything is migrated when a hot-plugged device owns descriptors.
    pub(crate) fn new(path: &Path, state: &HotplugState, arch: &dyn QemuArch) -> VmResult<Self> {
        let path = absolute(path)?;
        let hotplug = SavedHotplug::capture(state, arch)?.to_json()?;
        Ok(SaveFiles {
            partial: partial_path(&path),
            path,
            hotplug,
        })
    }

    /// The save sequence, to the partial file.
    pub(crate) fn engine(
        &self,
        capabilities: &[MigrationCapability],
        timeout: Duration,
    ) -> Engine<'static, VmResult<()>> {
        Migration::new(&self.partial, capabilities, timeout).save()
    }

    /// Puts the files in place after the engine's `result`, or removes them.
    pub(crate) fn finish(self, result: VmResult<()>) -> VmResult<()> {
        let hotplug_path = hotplug_state_path(&self.path);
        let partial_hotplug = partial_path(&hotplug_path);
        let result = result
            .and_then(|()| write_private(&partial_hotplug, &self.hotplug))
            .and_then(|()| rename(&partial_hotplug, &hotplug_path))
            .and_then(|()| rename(&self.partial, &self.path));
        if result.is_err() {
            let _ = std::fs::remove_file(&self.partial);
            let _ = std::fs::remove_file(&partial_hotplug);
        }
        result
    }
}

/// The save and restore methods [`Vm`](crate::Vm) and `AsyncVm` share (see [`crate::vm`]'s
/// `vm_methods!`): `lifecycle_methods!(Blocking, [], [])` and `lifecycle_methods!(Tokio,
/// [async], [.await])`.
macro_rules! lifecycle_methods {
    ($driver:ident, [$($async_:tt)?], [$(.$await_:tt)?]) => {
        /// Saves the VM's state to `path` (created or truncated; see the [module
        /// docs](crate::lifecycle)) within the arch's migration timeout
        /// ([`QemuArch::migration_wait_timeout`](crate::QemuArch::migration_wait_timeout)):
        /// [`Self::save_within`].
        pub $($async_)? fn save(&self, path: impl AsRef<std::path::Path>) -> $crate::VmResult<()> {
            let timeout = self.arch().migration_wait_timeout();
            self.save_within(path, timeout)$(.$await_)?
        }

        /// Saves the VM's state to `path` (created or truncated; see the [module
        /// docs](crate::lifecycle)): capabilities, `migrate`, then a wait of at most `timeout` (a
        /// timeout too long for a deadline is none), then the hotplug state written to
        /// [`hotplug_state_path`](crate::lifecycle::hotplug_state_path). Afterwards the VM is in
        /// the `postmigrate` state.
        ///
        /// Errors: [`VmError::Hotplug`](crate::VmError::Hotplug) (before anything is migrated) when
        /// a hot-plugged device owns file descriptors;
        /// [`VmError::Migration`](crate::VmError::Migration) when QEMU reports the migration failed
        /// or it does not complete in time, [`VmError::Qmp`](crate::VmError::Qmp) when a command is
        /// refused or QEMU goes away ([`hvarch_qmp::Error::Disconnected`]),
        /// [`VmError::Io`](crate::VmError::Io) when the hotplug state cannot be written. A failed
        /// save is cancelled and leaves the guest running or paused as it was. The state is written
        /// to temporary files next to `path` and renamed into place only when complete, so a failed
        /// save leaves an earlier snapshot at `path` untouched and no partial file behind.
        pub $($async_)? fn save_within(
            &self,
            path: impl AsRef<std::path::Path>,
            timeout: std::time::Duration,
        ) -> $crate::VmResult<()> {
            let state = self.hotplug_state();
            let files = $crate::lifecycle::SaveFiles::new(path.as_ref(), state, self.arch())?;
            let capabilities = self.arch().migration_capabilities();
            let engine = files.engine(&capabilities, timeout);
            let mut driver = $crate::engine::$driver::new(self.qmp());
            let result = $crate::engine::Driver::run(&mut driver, engine)$(.$await_)?;
            Self::offload(move || files.finish(result))$(.$await_)?
        }

        /// Launches `assembled` with `-incoming defer` and loads the state saved at `path` into it
        /// (see the [module docs](crate::lifecycle)); returns once the load completed.
        ///
        /// When a save left a hotplug state next to `path`
        /// ([`hotplug_state_path`](crate::lifecycle::hotplug_state_path)), its devices are
        /// cold-plugged into `assembled` and its bridges given to the arch backend before the
        /// launch, and the restored VM carries its [`HotplugState`](crate::HotplugState); a state
        /// that does not fit `assembled` is a [`VmError::Hotplug`](crate::VmError::Hotplug) and
        /// nothing is launched.
        ///
        /// Any `incoming` the assembled configuration had is replaced. On error the new QEMU is
        /// killed and reaped and its runtime directory removed; a failed load is a
        /// [`VmError::Migration`](crate::VmError::Migration) carrying QEMU's reason.
        pub $($async_)? fn restore(
            assembled: $crate::Assembled,
            path: impl AsRef<std::path::Path>,
            options: $crate::LaunchOptions,
        ) -> $crate::VmResult<Self> {
            let path = path.as_ref().to_owned();
            let prepare = move || $crate::lifecycle::prepare_restore(assembled, &path);
            let (assembled, path, hotplug) = Self::offload(prepare)$(.$await_)??;
            // Dropped (killed, reaped, cleaned) if anything below fails.
            let mut vm = Self::launch(assembled, options)$(.$await_)??;
            if let Some(state) = hotplug {
                vm.core.hotplug = state;
            }
            let capabilities = vm.arch().migration_capabilities();
            let timeout = vm.arch().migration_wait_timeout();
            let migration = $crate::lifecycle::Migration::new(&path, &capabilities, timeout);
            let mut driver = $crate::engine::$driver::new(vm.qmp());
            let loaded = $crate::engine::Driver::run(&mut driver, migration.restore())$(.$await_)?;
            loaded.map_err(|e| $crate::lifecycle::with_stderr(e, &vm.stderr()))?;
            Ok(vm)
        }

        /// Waits until `query-migrate` reports `completed`, for at most `timeout` (Kata's
        /// `waitMigration`; see [`wait`](crate::lifecycle::wait)); a `failed` or `cancelled`
        /// migration is a [`VmError::Migration`](crate::VmError::Migration) with QEMU's
        /// `error-desc`. [`Self::save`] and [`Self::restore`] wait the arch's
        /// [`QemuArch::migration_wait_timeout`](crate::QemuArch::migration_wait_timeout).
        pub $($async_)? fn wait_migration(&self, timeout: std::time::Duration) -> $crate::VmResult<()> {
            let mut driver = $crate::engine::$driver::new(self.qmp());
            $crate::engine::Driver::run(&mut driver, $crate::lifecycle::wait(timeout))$(.$await_)?
        }
    };
}
pub(crate) use lifecycle_methods;

/// Checks the saved state at `path` and prepares `assembled` to receive it (`-incoming
/// defer`, the saved hot-plugged devices); returns it, the absolute path and the hotplug
/// state the restored VM starts with. Reads files: an async caller runs it off the runtime.
pub(crate) fn prepare_restore(
    mut assembled: Assembled,
    path: &Path,
) -> VmResult<(Assembled, PathBuf, Option<HotplugState>)> {
    let path = absolute(path)?;
    if !path.is_file() {
        return Err(VmError::Migration {
            reason: format!("no saved state at {}", path.display()),
        });
    }
    let hotplug = read_saved_hotplug(&path)?
        .map(|saved| saved.apply(&mut assembled))
        .transpose()?;
    assembled.config.incoming = Some(Incoming::Defer);
    Ok((assembled, path, hotplug))
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

/// Adds QEMU's stderr to a migration error (the destination often explains a failed load
/// there).
pub(crate) fn with_stderr(error: VmError, stderr: &str) -> VmError {
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

    #[test]
    fn partial_files_sit_beside_their_target() {
        assert_eq!(
            partial_path(Path::new("/s/vm.state")),
            Path::new("/s/.vm.state.partial")
        );
        assert_eq!(
            hotplug_state_path(Path::new("/s/vm.state")),
            Path::new("/s/vm.state.hotplug.json")
        );
    }
}

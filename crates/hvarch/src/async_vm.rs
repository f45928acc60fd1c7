//! [`AsyncVm`]: [`crate::Vm`] for tokio (feature `tokio`). The same launch plan, the same
//! engines, the same method bodies (see [`crate::vm`]): each method is the blocking one,
//! awaited, and none blocks a runtime thread.
//!
//! - **Launch**: the runtime directory, the QMP socket and QEMU's command line are prepared
//!   on tokio's blocking pool (file operations), QEMU is forked by hvarch's process-lifetime spawner
//!   thread while the task awaits its answer, and the QMP greeting is awaited on
//!   [`AsyncQmp`]. A launch future dropped halfway leaves nothing behind: the spawner kills and
//!   reaps a QEMU nobody waits for, and one already started is killed and reaped in the
//!   background.
//! - **QMP, hotplug, save and restore, shutdown**: [`AsyncQmp`], and the engines on the
//!   [`Tokio`] driver. The file work of a save or restore (the hotplug state file, its
//!   `fsync` and renames) runs on tokio's blocking pool.
//! - **Reaping**: QEMU's exit is a pidfd becoming readable on the runtime's reactor
//!   ([`AsyncProcess`]). Dropping an [`AsyncVm`] kills a QEMU that still runs; a background
//!   thread reaps it, then removes what hvarch created in the runtime directory. After
//!   [`AsyncVm::shutdown`] QEMU is reaped already, and the drop removes the files at once.
//!
//! ```no_run
//! use std::time::Duration;
//! use hvarch::{assemble, AsyncVm, LaunchOptions, VmSpec};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut vm = AsyncVm::launch(assemble(&VmSpec::kata_default())?, LaunchOptions::default())
//!     .await?;
//! vm.resume().await?;
//! assert_eq!(vm.status().await?, "running");
//! let outcome = vm.shutdown(Duration::from_secs(10)).await?;
//! println!("{outcome}");
//! # Ok(())
//! # }
//! ```

use std::os::unix::net::UnixStream;
use std::process::{Child, Command};

use hvarch_devices::fd::FdTable;
use hvarch_qmp::{AsyncEventSubscription, AsyncQmp};

use crate::engine::{AsyncProcess, Tokio};
use crate::lifecycle::lifecycle_methods;
use crate::vm::{from_launched, vm_methods, Core, VmError, VmResult};

/// A running QEMU and its async QMP connection: [`crate::Vm`] for tokio (see the [module
/// docs](self)). `Send` and `Sync`; its futures are `Send`.
#[derive(Debug)]
pub struct AsyncVm {
    // Dropped in this order: the connection closes, then QEMU is killed and reaped in the
    // background (unless it ended), then what hvarch created in the runtime directory is
    // removed.
    qmp: AsyncQmp,
    /// QEMU's `SHUTDOWN` events, from launch on.
    shutdowns: AsyncEventSubscription,
    /// Every `DEVICE_DELETED` since launch, drained by each hotplug call.
    deleted: AsyncEventSubscription,
    process: AsyncProcess,
    core: Core,
}

impl AsyncVm {
    vm_methods!(AsyncQmp, Tokio, [async], [.await]);
    lifecycle_methods!(Tokio, [async], [.await]);

    /// The tokio driver over everything the engines need, and the rest of the VM.
    fn driver(&mut self) -> (Tokio<'_>, &mut Core) {
        let driver = Tokio::new(&self.qmp)
            .with_deleted(&mut self.deleted)
            .with_shutdowns(&mut self.shutdowns)
            .with_process(&mut self.process);
        (driver, &mut self.core)
    }

    /// Starts QEMU from the spawner thread, awaiting its answer.
    async fn spawn(command: Command, fds: FdTable) -> std::io::Result<Child> {
        crate::spawn::spawn_async(command, fds).await
    }

    /// Negotiates QMP on the launch's connection.
    async fn connect(
        stream: UnixStream,
        config: &hvarch_qmp::Config,
    ) -> hvarch_qmp::Result<AsyncQmp> {
        AsyncQmp::from_std(stream, config).await
    }

    /// Runs blocking work (file I/O) on tokio's blocking pool.
    async fn offload<T: Send + 'static>(
        work: impl FnOnce() -> VmResult<T> + Send + 'static,
    ) -> VmResult<T> {
        match tokio::task::spawn_blocking(work).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(VmError::Io {
                what: "run file work on tokio's blocking pool".into(),
                source: std::io::Error::other(e),
            }),
        }
    }
}

from_launched!(AsyncVm, AsyncQmp, AsyncProcess);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EndedBy, LaunchOptions, ShutdownOutcome};

    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}

    #[test]
    fn an_async_vm_and_its_futures_are_send() {
        send_sync::<AsyncVm>();
        #[allow(clippy::diverging_sub_expression, unreachable_code, unused_variables)]
        fn futures(vm: &mut AsyncVm) {
            send(&vm.status());
            send(&vm.save("x"));
            send(&AsyncVm::launch(unreachable!(), LaunchOptions::default()));
        }
        let _ = futures;
        let _ = EndedBy::Quit;
        let _: Option<ShutdownOutcome> = None;
    }
}

//! One real-QEMU scenario, two drivers: [`two_drivers!`](crate::two_drivers) compiles each
//! scenario twice, in a module `blocking` (on [`hvarch::Vm`]) and a module
//! `tokio` (on [`hvarch::AsyncVm`]).
//!
//! A scenario's body names the VM type `TestVm` and passes every call that is a future on
//! the async VM through `finish` (the identity for [`hvarch::Vm`], a `block_on` on a shared
//! multi-thread runtime for [`hvarch::AsyncVm`]): `finish(TestVm::launch(a, options))`,
//! `finish(vm.hotplug().add_block(…))`, `finish(vm.shutdown(grace))`. The query helpers of
//! [`crate::query`] take either VM ([`QmpVm`]).

use std::future::Future;
use std::sync::OnceLock;

use serde_json::Value;

/// A VM whose QMP client the query helpers can use, whichever driver it has.
pub trait QmpVm {
    /// Executes `command` with `arguments` on the VM's QMP client (blocking).
    fn execute_raw(&self, command: &str, arguments: Value) -> hvarch_qmp::Result<Value>;

    /// Whether QEMU offered QMP's `oob` capability, and whether it was negotiated.
    fn oob(&self) -> (bool, bool);
}

impl QmpVm for hvarch::Vm {
    fn execute_raw(&self, command: &str, arguments: Value) -> hvarch_qmp::Result<Value> {
        self.qmp().execute_raw(command, arguments)
    }

    fn oob(&self) -> (bool, bool) {
        (self.qmp().greeting().supports_oob(), self.qmp().oob())
    }
}

impl QmpVm for hvarch::AsyncVm {
    fn execute_raw(&self, command: &str, arguments: Value) -> hvarch_qmp::Result<Value> {
        runtime().block_on(self.qmp().execute_raw(command, arguments))
    }

    fn oob(&self) -> (bool, bool) {
        (self.qmp().greeting().supports_oob(), self.qmp().oob())
    }
}

/// The runtime the async scenarios run on (multi-thread: the VMs' QMP tasks keep running
/// between two `finish` calls).
pub fn runtime() -> &'static ::tokio::runtime::Runtime {
    static RUNTIME: OnceLock<::tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| ::tokio::runtime::Runtime::new().expect("a tokio runtime"))
}

/// The blocking driver: [`hvarch::Vm`], whose calls return their results.
pub mod blocking {
    pub use hvarch::Vm as TestVm;

    /// What a blocking call returns is its result.
    pub fn finish<T>(result: T) -> T {
        result
    }

    /// Waits until a dropped VM's QEMU `pid` is reaped and its `runtime` directory gone:
    /// dropping a `Vm` does both before it returns.
    pub fn await_drop(pid: u32, runtime: &std::path::Path) {
        let _ = runtime;
        crate::assert_reaped(pid);
    }
}

/// The async driver: [`hvarch::AsyncVm`], whose calls are futures run to their results.
pub mod tokio {
    use std::time::{Duration, Instant};

    pub use hvarch::AsyncVm as TestVm;

    /// Runs `future` to its result on the shared runtime.
    pub fn finish<F: super::Future>(future: F) -> F::Output {
        super::runtime().block_on(future)
    }

    /// Waits (a bound against a hang: 60 s) until a dropped VM's QEMU `pid` is reaped and its
    /// `runtime` directory gone: dropping an `AsyncVm` kills QEMU and leaves the reaping and
    /// the removal to a background thread.
    pub fn await_drop(pid: u32, runtime: &std::path::Path) {
        let until = Instant::now() + Duration::from_secs(60);
        while (crate::process_exists(pid) || runtime.exists()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        crate::assert_reaped(pid);
    }
}

/// Compiles the items given (`#[test]` scenarios and the helpers they share) twice, in
/// modules `blocking` and `tokio`, whose `TestVm` and `finish` they use (see the [module
/// docs](crate::drivers)).
#[macro_export]
macro_rules! two_drivers {
    ($($item:item)*) => {
        /// The scenarios on the blocking `Vm`.
        mod blocking {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::drivers::blocking::{await_drop, finish, TestVm};
            $($item)*
        }
        /// The scenarios on the tokio `AsyncVm`.
        mod tokio {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::drivers::tokio::{await_drop, finish, TestVm};
            $($item)*
        }
    };
}

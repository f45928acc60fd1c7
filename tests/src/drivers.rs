//! One real-QEMU scenario, two drivers: [`two_drivers!`](crate::two_drivers) compiles each
//! scenario twice, as `#[test]`s of a module `blocking` (on [`hvarch::Vm`]) and a module
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
}

impl QmpVm for hvarch::Vm {
    fn execute_raw(&self, command: &str, arguments: Value) -> hvarch_qmp::Result<Value> {
        self.qmp().execute_raw(command, arguments)
    }
}

impl QmpVm for hvarch::AsyncVm {
    fn execute_raw(&self, command: &str, arguments: Value) -> hvarch_qmp::Result<Value> {
        runtime().block_on(self.qmp().execute_raw(command, arguments))
    }
}

/// The runtime the async scenarios run on (two workers: the VMs' QMP tasks keep running
/// between two `finish` calls).
pub fn runtime() -> &'static ::tokio::runtime::Runtime {
    static RUNTIME: OnceLock<::tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        ::tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// The blocking driver: [`hvarch::Vm`], whose calls return their results.
pub mod blocking {
    pub use hvarch::Vm as TestVm;

    /// What a blocking call returns is its result.
    pub fn finish<T>(result: T) -> T {
        result
    }
}

/// The async driver: [`hvarch::AsyncVm`], whose calls are futures run to their results.
pub mod tokio {
    pub use hvarch::AsyncVm as TestVm;

    /// Runs `future` to its result on the shared runtime.
    pub fn finish<F: super::Future>(future: F) -> F::Output {
        super::runtime().block_on(future)
    }
}

/// Compiles each scenario (a `fn name() { body }`) twice, as `#[test]`s of modules
/// `blocking` and `tokio`, whose `TestVm` and `finish` the body uses (see the [module
/// docs](crate::drivers)).
#[macro_export]
macro_rules! two_drivers {
    ($($(#[$meta:meta])* fn $name:ident() $body:block)*) => {
        /// The scenarios on the blocking `Vm`.
        mod blocking {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::drivers::blocking::{finish, TestVm};
            $($(#[$meta])* #[test] fn $name() $body)*
        }
        /// The scenarios on the tokio `AsyncVm`.
        mod tokio {
            #[allow(unused_imports)]
            use super::*;
            #[allow(unused_imports)]
            use $crate::drivers::tokio::{finish, TestVm};
            $($(#[$meta])* #[test] fn $name() $body)*
        }
    };
}

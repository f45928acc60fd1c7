//! Hot plug and unplug over QMP (Kata's `qemu.go` hotplug flows, kata-go.md §4.5), with one
//! generic engine for every device and a step-by-step rollback.
//!
//! # The engine
//!
//! A device of the model renders to [`Part`]s in creation order (backends first). The same
//! parts that make its command-line arguments make its QMP commands, so one engine plugs any
//! device ([`Hotplugger::plug`]):
//!
//! 1. **placement**: a free cold-plugged PCIe root port (`bus` = the port, path
//!    `<port slot>/00`, the port's slot computed from the configuration, or asked of QEMU
//!    with `query-pci` once when the configuration does not determine it), a bridge slot
//!    (`bus` = the bridge, `addr` = the slot, path `<bridge slot>/<slot>`), the root bus
//!    (path from `query-pci` after the `device_add`), or the device as given
//!    ([`Placement`]). A virtio-ccw device (s390x) always takes a CCW bridge slot, which
//!    gives its device number (`devno=fe.<ssid>.<slot %04x>`; the guest sees
//!    [`Plugged::ccw_address`]);
//! 2. `getfd` for every descriptor the parts own (named `<device id>-fd<n>`);
//! 3. each part's `qmp_add` in order (`blockdev-add`, `chardev-add`, `netdev_add`,
//!    `object-add`, then `device_add`).
//!
//! If a step fails, what was done is undone in reverse: `device_del` (waiting up to the
//! rollback timeout, [`ROLLBACK_UNPLUG_TIMEOUT`] by default, for `DEVICE_DELETED`) /
//! `blockdev-del` / `netdev_del` / `chardev-remove` / `object-del` of the parts already
//! created, `closefd` of descriptors QEMU received but no created part consumed, and the
//! place is freed. The error of the failed step is returned ([`HotplugError::Step`]);
//! rollback failures are logged. When QEMU does not confirm the undo's `device_del` in time
//! (a guest that does not answer the PCIe attention button), the device becomes a
//! [pending removal](HotplugState#pending-removals): nothing is leaked for good.
//!
//! [`Hotplugger::unplug`] is `device_del` waiting for `DEVICE_DELETED` (bounded by a
//! timeout; for virtio-mem first `qom-set requested-size 0`), then the backends' removal in
//! reverse order, then the place freed.
//!
//! Every call first completes the removals whose `DEVICE_DELETED` arrived since the last
//! one (the driver's standing subscription, see [`crate::engine::Step::TakeDeleted`]).
//!
//! # The flows
//!
//! Kata's flows are thin layers over the engine, building each device with the arch backend
//! (the same builder as cold plug): [`Hotplugger::add_block`] (virtio-blk on PCI or CCW,
//! virtio-scsi `scsi-hd`, or an NVDIMM), [`Hotplugger::add_vhost_user`] (vhost-user-blk), [`Hotplugger::add_vfio`],
//! [`Hotplugger::add_network`], [`Hotplugger::add_cpus`] / [`Hotplugger::remove_cpus`],
//! [`Hotplugger::add_memory`] (pc-dimm), [`Hotplugger::resize_virtio_mem`] and
//! [`Hotplugger::balloon`].
//!
//! # Drivers
//!
//! The engine and the flows are sans-IO ([`crate::engine`]): a [`Hotplugger`] borrows the arch
//! backend (bridge slots) and a [`HotplugState`], and runs each flow with its [`Driver`].
//! With [`Blocking`] (what [`crate::Vm::hotplug`] lends) its methods return their results;
//! with the tokio driver (feature `tokio`) they return futures of the same results, from the
//! same code.
//!
//! # Saving the state
//!
//! Each [`Plugged`] keeps the [`Device`] as it was plugged (its final `bus`/`addr`), and
//! [`HotplugState`] is serde-serializable, so a saved VM's hot-plugged devices can be
//! cold-plugged into the VM that restores it ([`SavedHotplug`], written by
//! [`crate::Vm::save`] next to the state file; see [`crate::lifecycle`]). A device holding
//! owned file descriptors (a network device's tap fds) cannot be saved:
//! [`SavedHotplug::capture`] refuses it with [`HotplugError::OwnedFds`].
//!
//! [`Part`]: hvarch_devices::part::Part

use std::future::Future;
use std::time::Duration;

use hvarch_arch::resources::{BlockDrive, NetEndpoint, VfioDev, VhostUserDevice};
use hvarch_arch::settings::BlockDriver;
use hvarch_arch::ArchError;
use hvarch_devices::pci::PciAddr;
use hvarch_devices::Device;
use hvarch_qmp::Qmp;

use crate::engine::{Blocking, Driver, Engine};
use crate::QemuArch;

mod engine;
mod flows;
mod root_bus;
mod saved;
mod state;

pub use saved::{SavedHotplug, SAVED_HOTPLUG_VERSION};
pub use state::{HotplugState, Location, Plugged};

use engine::Flows;

/// How long a rollback waits for `DEVICE_DELETED` of a device it created, unless the
/// [`Hotplugger`] is given another ([`Hotplugger::rollback_timeout`]).
pub const ROLLBACK_UNPLUG_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong while hot-plugging or unplugging. Each variant names what failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HotplugError {
    /// The device model refused the device (the error names the field at fault).
    #[error("cannot hot-plug {device}: {source}")]
    Device {
        /// The device (kind and id).
        device: String,
        /// The device model's error.
        #[source]
        source: hvarch_devices::Error,
    },
    /// The arch backend refused to build the device or had no bridge slot for it.
    #[error("cannot hot-plug {device}: {source}")]
    Arch {
        /// The device (kind and id).
        device: String,
        /// The backend's error (e.g. "no more bridge slots available").
        #[source]
        source: ArchError,
    },
    /// The device cannot be placed as asked (no free root port, not a PCI device, …).
    #[error("cannot place {device}: {reason}")]
    Placement {
        /// The device (kind and id).
        device: String,
        /// Why.
        reason: String,
    },
    /// A QMP step failed. For a hotplug, every earlier step has been undone, or, when QEMU
    /// did not confirm the undo's `device_del`, the device is a pending removal.
    #[error("hotplug step `{step}` failed: {source}")]
    Step {
        /// The step, e.g. `device_add virtio-drive0` or `device_del virtio-drive0`.
        step: String,
        /// QEMU's refusal, a timeout or a lost connection.
        #[source]
        source: Box<hvarch_qmp::Error>,
    },
    /// QEMU refused `query-hotpluggable-cpus` (e.g. arm64 `virt`: "machine does not support
    /// hot-plugging CPUs").
    #[error("vCPU hotplug is not supported on this machine: {reason}")]
    CpuHotplugUnsupported {
        /// QEMU's message.
        reason: String,
    },
    /// Fewer vCPUs could be added than asked (those added stay).
    #[error("failed to hot add vCPUs: only {added} vCPUs of {requested} were added")]
    CpusPartial {
        /// vCPUs added.
        added: u32,
        /// vCPUs asked for (after clamping to the VM's maximum).
        requested: u32,
    },
    /// Memory cannot be hot-plugged into this VM.
    #[error("memory hotplug is not supported: {reason}")]
    MemoryHotplugUnsupported {
        /// Why (the machine, no slots, arm64 without UEFI firmware).
        reason: String,
    },
    /// No hot-plugged device has this id.
    #[error("device {id} is not hot-plugged")]
    NotPlugged {
        /// The id.
        id: String,
    },
    /// A device with this id is already hot-plugged.
    #[error("device {id} is already hot-plugged")]
    AlreadyPlugged {
        /// The id.
        id: String,
    },
    /// A device with this id is still being removed: QEMU has not confirmed its
    /// `device_del` (see [pending removals](HotplugState#pending-removals)).
    #[error(
        "device {id} is still being removed (QEMU has not confirmed its device_del); \
         its removal completes when QEMU deletes it (see unplug and reconcile)"
    )]
    RemovalPending {
        /// The id.
        id: String,
    },
    /// The hotplug state cannot be saved: a hot-plugged device holds file descriptors this
    /// process owns (a network device's tap or vhost fds), which a state file cannot carry.
    #[error(
        "cannot save the hotplug state: {device} holds {count} owned file descriptor(s) \
         (a network device's tap/vhost fds?), which cannot be written to a state file"
    )]
    OwnedFds {
        /// The device (kind and id).
        device: String,
        /// How many descriptors it owns.
        count: usize,
    },
    /// A saved hotplug state cannot be written or read, or does not fit the VM restoring it.
    #[error("hotplug state: {reason}")]
    State {
        /// What is wrong.
        reason: String,
    },
    /// The request itself is invalid.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was asked.
        what: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

pub(crate) fn step_error(step: impl Into<String>, source: hvarch_qmp::Error) -> HotplugError {
    HotplugError::Step {
        step: step.into(),
        source: Box::new(source),
    }
}

/// The result type of hotplug operations.
pub type HotplugResult<T> = std::result::Result<T, HotplugError>;

/// Where a PCI device goes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Placement {
    /// A free cold-plugged PCIe root port if the VM has one, else a bridge slot. (arm64
    /// hot-plugs through root ports in later Kata: SHPC bridges do not hot-plug on arm64
    /// guests.)
    #[default]
    Auto,
    /// A free PCIe root port (an error if there is none).
    RootPort,
    /// A free slot on a bridge (Kata 1.x's way).
    Bridge,
    /// The root bus, no bus or address (Kata's `HotplugVFIOOnRootBus`).
    RootBus,
    /// A bus (and address) named by the caller; no guest PCI path is computed.
    Bus {
        /// The bus id.
        bus: String,
        /// The address on it.
        addr: Option<PciAddr>,
    },
    /// The device's own `bus`/`addr` (SCSI disks, vCPUs, DIMMs, serial ports).
    AsIs,
}

/// Hot-plugs and unplugs devices of a VM: the flows of this module, each run by the driver
/// `D` (see the [module docs](self)). It borrows the arch backend (bridge slots) and the
/// VM's [`HotplugState`]; [`crate::Vm::hotplug`] lends a running VM's.
///
/// Each method returns `D::Run<'_, T>`: with [`Blocking`] (the default) that is the result
/// `T` itself, with the tokio driver a future of it.
#[derive(Debug)]
pub struct Hotplugger<'a, D: Driver = Blocking<'a>> {
    driver: D,
    arch: &'a mut dyn QemuArch,
    state: &'a mut HotplugState,
    rollback_timeout: Duration,
}

/// What a [`Hotplugger`] method gives with driver `D`: `T` for [`Blocking`], a future of `T`
/// for the tokio driver.
pub type Run<'s, D, T> = <D as Driver>::Run<'s, T>;

/// What a [`Hotplugger`] method that plugs a device gives with driver `D`.
pub type PlugRun<'s, D> = Run<'s, D, HotplugResult<Plugged>>;

impl<'a> Hotplugger<'a> {
    /// A blocking hotplugger over `qmp`, `arch` (bridge slots) and `state`. It notices no
    /// `DEVICE_DELETED` between calls: give it a standing subscription with
    /// [`Hotplugger::with_driver`] and [`Blocking::with_deleted`] (as [`crate::Vm`] does).
    pub fn new(qmp: &'a Qmp, arch: &'a mut dyn QemuArch, state: &'a mut HotplugState) -> Self {
        Hotplugger::with_driver(Blocking::new(qmp), arch, state)
    }
}

impl<'a, D: Driver> Hotplugger<'a, D> {
    /// A hotplugger running its flows with `driver`, over `arch` and `state`.
    pub fn with_driver(driver: D, arch: &'a mut dyn QemuArch, state: &'a mut HotplugState) -> Self {
        Hotplugger {
            driver,
            arch,
            state,
            rollback_timeout: ROLLBACK_UNPLUG_TIMEOUT,
        }
    }

    /// Sets how long a rollback waits for `DEVICE_DELETED` of a device it created
    /// ([`ROLLBACK_UNPLUG_TIMEOUT`] by default; a duration too long for a deadline is none).
    pub fn rollback_timeout(mut self, timeout: Duration) -> Self {
        self.rollback_timeout = timeout;
        self
    }

    /// The state (what is plugged, free root ports, pending removals).
    pub fn state(&self) -> &HotplugState {
        self.state
    }

    /// Runs `flow` with the driver, after completing the removals QEMU confirmed since the
    /// last call.
    fn drive<'s, T, F, Fut>(&'s mut self, flow: F) -> Run<'s, D, T>
    where
        T: Send + 's,
        F: FnOnce(Flows<'s>) -> Fut + Send + 's,
        Fut: Future<Output = T> + Send + 's,
    {
        let Hotplugger {
            driver,
            arch,
            state,
            rollback_timeout,
        } = self;
        let (arch, state, rollback_timeout) = (&mut **arch, &mut **state, *rollback_timeout);
        driver.run(Engine::new(move |port| async move {
            let mut flows = Flows {
                port,
                arch,
                state,
                rollback_timeout,
            };
            flows.settle().await;
            flow(flows).await
        }))
    }

    /// Plugs the device `build` makes with the arch backend (or its refusal).
    fn plug_built(
        &mut self,
        build: impl FnOnce(&mut dyn QemuArch, &HotplugState) -> flows::Built,
    ) -> PlugRun<'_, D> {
        let built = build(&mut *self.arch, self.state);
        self.drive(move |mut f| async move {
            let (device, placement) = built?;
            f.plug(device, placement).await
        })
    }

    /// Hot-plugs `device` at `placement` (see the [module docs](self)): placement, `getfd`
    /// for each owned descriptor, then each part's QMP command; undone step by step if a step
    /// fails.
    pub fn plug(&mut self, device: impl Into<Device>, placement: Placement) -> PlugRun<'_, D> {
        let device = device.into();
        self.plug_built(|_, _| Ok((device, placement)))
    }

    /// Unplugs device `id` (plugged, or with a pending removal): `device_del` and a wait of
    /// up to `timeout` for `DEVICE_DELETED` (virtio-mem: `qom-set requested-size 0` first),
    /// then its backends' removal in reverse order, then its place freed.
    ///
    /// A device QEMU no longer knows counts as removed. If the removal is not confirmed in
    /// time, the error is returned and the device becomes a [pending
    /// removal](HotplugState#pending-removals) (call again later); a `device_del` QEMU refuses
    /// leaves the device plugged. A backend QEMU refuses to remove is returned as the error,
    /// the device a pending removal holding what is left. A timeout too long for a deadline
    /// is none.
    pub fn unplug(&mut self, id: &str, timeout: Duration) -> Run<'_, D, HotplugResult<()>> {
        let id = id.to_owned();
        self.drive(move |mut f| async move { f.unplug(&id, timeout).await })
    }

    /// Compares the state with what QEMU has (`qom-list /machine/peripheral`, and
    /// `query-named-block-nodes` when block nodes are to be removed) and completes the
    /// removal of every device QEMU no longer has (a pending removal whose `DEVICE_DELETED`
    /// was missed, a device the guest ejected): backends still present are removed and
    /// places freed. Returns their ids; sends nothing when nothing is plugged or pending.
    pub fn reconcile(&mut self) -> Run<'_, D, HotplugResult<Vec<String>>> {
        self.drive(|mut f| async move { f.reconcile().await })
    }

    /// Hot-plugs a block drive (Kata's `hotplugAddBlockDevice`): the arch backend's disk
    /// with node name `<drive id>` and `share-rw=on`, then
    ///
    /// - [`BlockDriver::VirtioBlk`]: `blockdev-add`, `device_add` of the backend's
    ///   virtio-blk (`virtio-blk-pci`; `virtio-blk-ccw` on s390x) with id
    ///   `virtio-<drive id>` at `placement`;
    /// - [`BlockDriver::VirtioBlkCcw`]: the same on the CCW transport: a CCW bridge slot
    ///   gives the device number (`devno=fe.<ssid>.<slot>`; the guest finds the disk at
    ///   [`Plugged::ccw_address`]);
    /// - [`BlockDriver::VirtioScsi`]: `blockdev-add`, `device_add scsi-hd` on the VM's
    ///   virtio-scsi bus (`scsi0.0`) with `scsi-id` = index / 256, `lun` = index % 256
    ///   (`placement` is not used);
    /// - [`BlockDriver::Nvdimm`]: `object-add memory-backend-file`
    ///   `nvdimmbackmem<drive id>` on the file (shared, sized from the file or block
    ///   device; read-only and the NVDIMM unarmed for a read-only drive), then
    ///   `device_add nvdimm` `nvdimm<drive id>` (`placement` is not used). The machine must
    ///   allow it (`nvdimm=on`, memory slots; arm64 also UEFI firmware): QEMU's refusal is
    ///   the error.
    pub fn add_block(
        &mut self,
        drive: &BlockDrive,
        driver: BlockDriver,
        placement: Placement,
    ) -> PlugRun<'_, D> {
        self.plug_built(|arch, state| flows::block(arch, state, drive, driver, placement))
    }

    /// Hot-plugs a vhost-user-blk device (Kata: other vhost-user kinds are refused):
    /// `chardev-add` (a client socket `char-<dev id>`), then `device_add vhost-user-blk-pci`
    /// with id `virtio-<dev id>` at `placement`.
    pub fn add_vhost_user(
        &mut self,
        attrs: &VhostUserDevice,
        placement: Placement,
    ) -> PlugRun<'_, D> {
        self.plug_built(|arch, _| flows::vhost_user(arch, attrs, placement))
    }

    /// Hot-plugs a VFIO device (id as given): on a bridge slot, a root port, or the root bus
    /// ([`Placement::RootBus`], Kata's `HotplugVFIOOnRootBus`).
    pub fn add_vfio(&mut self, dev: &VfioDev, placement: Placement) -> PlugRun<'_, D> {
        self.plug_built(|arch, _| flows::vfio(arch, dev, placement))
    }

    /// Hot-plugs a network endpoint (Kata's `hotplugNetDevice`): `getfd` for each tap and
    /// vhost descriptor, `netdev_add` (id `<ifname>`, with `fds`/`vhostfds`), then
    /// `device_add virtio-net-pci` (id `virtio-<ifname>`, `mq=on` and `vectors=2q+2` for
    /// several queues) at `placement`.
    pub fn add_network(&mut self, endpoint: &NetEndpoint, placement: Placement) -> PlugRun<'_, D> {
        self.plug_built(|arch, _| flows::network(arch, endpoint, placement))
    }

    /// Adds up to `amount` vCPUs (Kata's `hotplugAddCPUs`), clamped to the VM's maximum:
    /// `query-hotpluggable-cpus`, then `device_add` of each free slot (no `qom-path`) with
    /// its socket/die/core/thread ids and id `cpu-<n>`. A slot QEMU refuses is skipped.
    /// Returns how many were added; fewer than asked is [`HotplugError::CpusPartial`].
    /// A machine without CPU hotplug is [`HotplugError::CpuHotplugUnsupported`].
    pub fn add_cpus(&mut self, amount: u32) -> Run<'_, D, HotplugResult<u32>> {
        self.drive(move |mut f| async move { f.add_cpus(amount).await })
    }

    /// Removes up to `amount` hot-added vCPUs, last added first, each with a `device_del`
    /// waiting up to `timeout`. Returns how many were removed.
    pub fn remove_cpus(
        &mut self,
        amount: u32,
        timeout: Duration,
    ) -> Run<'_, D, HotplugResult<u32>> {
        self.drive(move |mut f| async move { f.remove_cpus(amount, timeout).await })
    }

    /// Hot-plugs `size_mb` MiB of RAM as a DIMM (Kata's `hotplugMemory`): slot = the highest
    /// slot of `query-memory-devices` + 1 (or 0), `object-add` a backend `mem<slot>` like the
    /// VM's RAM backend (RAM, file or memfd, shared or not), then `device_add pc-dimm`
    /// `dimm<slot>`.
    ///
    /// Refused with [`HotplugError::MemoryHotplugUnsupported`] when the backend says the
    /// machine has no DIMM hotplug, the VM has no memory slots, or on arm64 without UEFI
    /// firmware (`virt` needs ACPI's GED device, which only firmware provides).
    pub fn add_memory(&mut self, size_mb: u64) -> PlugRun<'_, D> {
        self.drive(move |mut f| async move { f.add_memory(size_mb).await })
    }

    /// Asks virtio-mem device `id` to plug `requested_bytes` (`qom-set requested-size`).
    pub fn resize_virtio_mem(
        &mut self,
        id: &str,
        requested_bytes: u64,
    ) -> Run<'_, D, HotplugResult<()>> {
        let id = id.to_owned();
        self.drive(move |mut f| async move { f.resize_virtio_mem(&id, requested_bytes).await })
    }

    /// Sets the balloon's target guest memory size (`balloon {"value": bytes}`).
    pub fn balloon(&mut self, bytes: u64) -> Run<'_, D, HotplugResult<()>> {
        self.drive(move |mut f| async move { f.balloon(bytes).await })
    }
}

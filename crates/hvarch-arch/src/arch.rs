//! The [`QemuArch`] trait (Kata's `qemuArch` interface) and [`ArchBase`] (Kata's
//! `qemuArchBase`), which carries the generic behaviour every backend starts from.
//!
//! A backend holds an [`ArchBase`] built from its [`ArchSpec`] (its constants), exposes it
//! through [`QemuArch::base`] / [`QemuArch::base_mut`], and overrides only the methods whose
//! behaviour differs on its architecture. Every other method keeps the default, which
//! delegates to the base.
//!
//! Devices are appended to a `Vec<Device>` in the order the methods are called; the methods
//! never talk to QEMU. What must happen over QMP (migration capabilities) is returned as data.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hvarch_devices::block::{Aio, BlockBackend, BlockDevice, BlockFormat, BlockProtocol};
use hvarch_devices::bridge::{PciBridge, PcieRootPort};
use hvarch_devices::chardev::{CharBackend, CharDevice, Chardev, SerialController};
use hvarch_devices::config::{Accelerator, Cpu, Memory, Smp};
use hvarch_devices::fd::FdArg;
use hvarch_devices::fs9p::{FsBackend, FsDevice, Multidevs, SecurityModel};
use hvarch_devices::iommu::IntelIommu;
use hvarch_devices::iothread::IoThread;
use hvarch_devices::kernel_params::KernelParams;
use hvarch_devices::memory::{MemoryBackend, MemoryBackendKind, MemoryDevice, MemoryDeviceKind};
use hvarch_devices::net::{NetBackend, NetDevice};
use hvarch_devices::rng::RngDevice;
use hvarch_devices::transport::{Transport, VirtioOpts};
use hvarch_devices::vfio::{VfioDevice, VfioSource};
use hvarch_devices::vhost_user as dev_vhost_user;
use hvarch_devices::vsock::VsockDevice;
use hvarch_devices::Device;

use crate::bridge::{Bridge, BridgeSlot, BridgeType, Bridges};
use crate::error::{ArchError, Result};
use crate::guest_arch::GuestArch;
use crate::kernel_params::{self as kparams, RootDevice};
use crate::machine::{self, MachineSpec};
use crate::resources::{
    BlockDrive, EndpointKind, InterworkingModel, NetEndpoint, RngDev, Socket, VSock, VfioDev,
    VhostUserDevice, VhostUserKind, Volume,
};
use crate::settings::HypervisorConfig;

/// Kata's limit on generated device ids (`maxDevIDSize`).
pub const MAX_DEV_ID_LEN: usize = 31;

/// What the guest can do with this VM (Kata's `types.Capabilities`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Block devices can be hot-plugged.
    pub block_device_hotplug: bool,
    /// Network devices can have several queues.
    pub multi_queue: bool,
    /// Host directories can be shared.
    pub fs_sharing: bool,
}

/// A migration capability to set with `migrate-set-capabilities` before saving or restoring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrationCapability {
    /// The capability's name, e.g. `x-ignore-shared`.
    pub capability: String,
    /// Its state.
    pub state: bool,
}

/// A backend's constants: what distinguishes one architecture's `qemu_<arch>.go` from another.
#[derive(Clone, Debug)]
pub struct ArchSpec {
    /// The guest architecture.
    pub guest_arch: GuestArch,
    /// The machine type used when the configuration names none.
    pub default_machine: &'static str,
    /// Supported machine types with their default options.
    pub machines: Vec<MachineSpec>,
    /// The QEMU binary for each machine type.
    pub qemu_paths: Vec<(&'static str, &'static str)>,
    /// The architecture's kernel parameters.
    pub kernel_params: KernelParams,
    /// The most vCPUs QEMU can give a guest of this architecture.
    pub max_vcpus: u32,
    /// How long to wait for a migration to finish.
    pub migration_wait: Duration,
    /// Whether the rootfs NVDIMM is mounted with DAX.
    pub dax: bool,
}

/// The generic state and behaviour of every backend (Kata's `qemuArchBase`).
#[derive(Clone, Debug)]
pub struct ArchBase {
    /// The backend's constants.
    pub spec: ArchSpec,
    /// The machine type in use.
    pub machine_type: String,
    /// KVM or TCG.
    pub accelerator: Accelerator,
    /// A configured QEMU binary, overriding the per-machine default.
    pub hypervisor_path: Option<PathBuf>,
    /// Extra CPU features.
    pub cpu_features: Vec<String>,
    /// MiB added to `maxmem`.
    pub memory_offset_mb: u64,
    /// Running nested: virtio-pci devices get `disable-modern=on`.
    pub nested_run: bool,
    /// Use vhost-net.
    pub vhost: bool,
    /// Do not put the rootfs image on an NVDIMM.
    pub disable_nvdimm: bool,
    /// Network devices appended so far (for `network-<n>` ids).
    pub network_index: u32,
    /// Supported machines with their options (a copy: image handling adds `nvdimm` here,
    /// never to shared constants — Kata's fix e2661943).
    pub machines: Vec<MachineSpec>,
    /// Always-present kernel parameters.
    pub kernel_params: KernelParams,
    /// Parameters added in debug mode.
    pub kernel_params_debug: KernelParams,
    /// Parameters added outside debug mode.
    pub kernel_params_non_debug: KernelParams,
    /// The VM's bridges.
    pub bridges: Bridges,
    /// pflash images.
    pub pflash: Vec<PathBuf>,
}

impl ArchBase {
    /// The base for `spec` configured by `config`. Image-path handling is not done here: the
    /// backend constructor calls [`QemuArch::handle_image_path`] once it exists.
    pub fn new(spec: ArchSpec, config: &HypervisorConfig) -> Result<Self> {
        let machine_type = config
            .machine_type
            .clone()
            .unwrap_or_else(|| spec.default_machine.to_owned());
        let mut machines = spec.machines.clone();
        if !config.machine_accelerators.is_empty() {
            let extra =
                hvarch_devices::config::MachineOptions::parse(&config.machine_accelerators)?;
            for machine in &mut machines {
                for (key, value) in extra.iter() {
                    machine.options.set(key, value)?;
                }
            }
        }
        let base = ArchBase {
            kernel_params: spec.kernel_params.clone(),
            kernel_params_debug: kparams::debug(),
            kernel_params_non_debug: kparams::non_debug(),
            spec,
            machine_type,
            accelerator: config.accelerator,
            hypervisor_path: config.hypervisor_path.clone(),
            cpu_features: config.cpu_features.clone(),
            memory_offset_mb: config.memory_offset_mb,
            nested_run: false,
            vhost: !config.disable_vhost_net,
            disable_nvdimm: config.disable_nvdimm,
            network_index: 0,
            machines,
            bridges: Bridges::new(),
            pflash: config.pflashes.clone(),
        };
        base.machine()?;
        Ok(base)
    }

    /// The machine in use, with its options.
    pub fn machine(&self) -> Result<MachineSpec> {
        self.machines
            .iter()
            .find(|m| m.machine_type == self.machine_type)
            .cloned()
            .ok_or_else(|| ArchError::UnsupportedMachine {
                machine: self.machine_type.clone(),
                supported: self
                    .machines
                    .iter()
                    .map(|m| m.machine_type.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Transport settings for the devices this base builds: virtio-mmio on `microvm`,
    /// virtio-pci elsewhere, with `disable-modern` when running nested (PCI only).
    pub fn virtio(&self) -> VirtioOpts {
        if self.machine_type == machine::MICROVM {
            VirtioOpts::on(Transport::Mmio)
        } else {
            VirtioOpts {
                disable_modern: self.nested_run,
                ..VirtioOpts::default()
            }
        }
    }

    /// `number` PCI bridges `pci-bridge-<i>`, whatever the machine (Kata's base behaviour).
    pub fn pci_bridges(&mut self, number: u32) {
        self.bridges = (0..number)
            .map(|i| Bridge::new(BridgeType::Pci, format!("pci-bridge-{i}"), 0))
            .collect::<Vec<_>>()
            .into();
    }

    /// `number` bridges of the machine's kind (Kata's `genericBridges`): PCI on `q35`, `pc`,
    /// `virt` and `pseries`; CCW on `s390-ccw-virtio`; none on machines without PCI bridges
    /// (`pc-lite`, `microvm`).
    pub fn generic_bridges(&mut self, number: u32) {
        let bridge_type = match self.machine_type.as_str() {
            machine::Q35 | machine::PC | machine::VIRT | machine::PSERIES => BridgeType::Pci,
            machine::S390_CCW_VIRTIO => BridgeType::Ccw,
            _ => {
                self.bridges = Bridges::new();
                return;
            }
        };
        self.bridges = (0..number)
            .map(|i| {
                Bridge::new(
                    bridge_type,
                    format!("{}-bridge-{i}", bridge_type.as_str()),
                    0,
                )
            })
            .collect::<Vec<_>>()
            .into();
    }

    /// The virtio-9p share for `volume`, with `multidevs` (Kata's base: `remap`; arm64: none).
    pub fn fs_9p_device(&self, volume: &Volume, multidevs: Option<Multidevs>) -> Result<Device> {
        if volume.mount_tag.is_empty() {
            return Err(hvarch_devices::Error::MissingField {
                what: "9p volume",
                field: "mount_tag",
            }
            .into());
        }
        let id = truncate_id(format!("extra-9p-{}", volume.mount_tag));
        let mut backend = FsBackend::new(id.clone(), volume.host_path.clone());
        backend.security_model = SecurityModel::None;
        backend.multidevs = multidevs;
        let mut device = FsDevice::new(format!("{id}-dev"), backend, volume.mount_tag.clone());
        device.virtio = self.virtio();
        Ok(device.into())
    }

    /// The rootfs image as an NVDIMM: a file-backed memory object the size of the image and
    /// an `nvdimm` device (`mem0` / `nv0`). `readonly` maps it read-only and disarmed.
    pub fn nvdimm_image(&self, path: &Path, readonly: bool) -> Result<Vec<Device>> {
        let size = image_size(path)?;
        let mut backend = MemoryBackend::file("mem0", size, path);
        if let MemoryBackendKind::File { readonly: ro, .. } = &mut backend.kind {
            *ro = readonly;
        }
        let mut nvdimm = MemoryDevice::nvdimm("nv0", backend);
        if let MemoryDeviceKind::Nvdimm { unarmed, .. } = &mut nvdimm.kind {
            *unarmed = readonly;
        }
        Ok(vec![nvdimm.into()])
    }
}

/// The size of an image file, for NVDIMM sizing.
fn image_size(path: &Path) -> Result<u64> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| {
        hvarch_devices::Error::InvalidValue {
            what: "image",
            field: "image_path",
            value: path.display().to_string(),
            reason: format!("cannot read the image: {e}"),
        }
        .into()
    })
}

/// Truncates a generated id to Kata's 31 bytes (ids are ASCII, so this never splits a char).
pub fn truncate_id(mut id: String) -> String {
    if id.len() > MAX_DEV_ID_LEN {
        let mut end = MAX_DEV_ID_LEN;
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        id.truncate(end);
    }
    id
}

/// A stable 16-hex-digit tag for `text` (FNV-1a), where Kata uses random hex: ids derived
/// from the same input are the same across runs, which keeps command lines reproducible.
pub fn stable_hex(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// One architecture's QEMU behaviour: every operation of Kata's `qemuArch` interface.
///
/// Every method has a default that delegates to [`ArchBase`]; a backend overrides only what
/// differs on its architecture.
pub trait QemuArch: fmt::Debug + Send + Sync {
    /// The generic state.
    fn base(&self) -> &ArchBase;

    /// The generic state, mutable.
    fn base_mut(&mut self) -> &mut ArchBase;

    /// The guest architecture.
    fn guest_arch(&self) -> GuestArch {
        self.base().spec.guest_arch
    }

    /// Marks the VM as running nested (virtio-pci devices get `disable-modern=on`).
    fn enable_nesting_checks(&mut self) {
        self.base_mut().nested_run = true;
    }

    /// Marks the VM as not nested.
    fn disable_nesting_checks(&mut self) {
        self.base_mut().nested_run = false;
    }

    /// Whether the VM runs nested.
    fn run_nested(&self) -> bool {
        self.base().nested_run
    }

    /// Uses vhost-net for network devices.
    fn enable_vhost_net(&mut self) {
        self.base_mut().vhost = true;
    }

    /// Does not use vhost-net.
    fn disable_vhost_net(&mut self) {
        self.base_mut().vhost = false;
    }

    /// The machine in use (type and options), or an error if the backend does not support it.
    fn machine(&self) -> Result<MachineSpec> {
        self.base().machine()
    }

    /// The QEMU binary: the configured one, else the backend's default for the machine.
    fn qemu_path(&self) -> Result<PathBuf> {
        let base = self.base();
        if let Some(path) = &base.hypervisor_path {
            return Ok(path.clone());
        }
        base.spec
            .qemu_paths
            .iter()
            .find(|(m, _)| *m == base.machine_type)
            .map(|(_, p)| PathBuf::from(p))
            .ok_or_else(|| ArchError::NoQemuPath {
                machine: base.machine_type.clone(),
            })
    }

    /// The kernel parameters: the architecture's, then the debug or non-debug set.
    fn kernel_parameters(&self, debug: bool) -> KernelParams {
        let base = self.base();
        let mut params = base.kernel_params.clone();
        params.extend(if debug {
            &base.kernel_params_debug
        } else {
            &base.kernel_params_non_debug
        });
        params
    }

    /// What the VM supports: block hotplug, multi-queue networking, filesystem sharing.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            block_device_hotplug: true,
            multi_queue: true,
            fs_sharing: true,
        }
    }

    /// Creates `number` hotplug bridges (not yet placed on the bus; see
    /// [`QemuArch::append_bridges`]).
    fn bridges(&mut self, number: u32) {
        self.base_mut().pci_bridges(number);
    }

    /// The vCPU topology: `vcpus` at boot, room for `max_vcpus`, one core and thread per socket.
    fn cpu_topology(&self, vcpus: u32, max_vcpus: u32) -> Smp {
        Smp {
            cpus: vcpus,
            sockets: Some(max_vcpus),
            dies: None,
            cores: Some(1),
            threads: Some(1),
            maxcpus: Some(max_vcpus),
        }
    }

    /// The CPU model: `host` under KVM, `max` under TCG, with the configured features.
    fn cpu_model(&self) -> Cpu {
        let base = self.base();
        let model = match base.accelerator {
            Accelerator::Kvm => "host",
            Accelerator::Tcg => "max",
        };
        Cpu {
            model: model.to_owned(),
            features: base.cpu_features.clone(),
        }
    }

    /// The memory layout: `memory_mb` at boot, `slots` hotplug slots, and a ceiling of host
    /// memory plus the configured offset. (Kata 1.x's base ignored the offset, so arm64 did;
    /// hvarch honours it.)
    fn memory_topology(&self, memory_mb: u64, host_memory_mb: u64, slots: u32) -> Memory {
        let mut memory = Memory::size(memory_mb << 20);
        memory.slots = Some(slots);
        memory.maxmem = Some((host_memory_mb + self.base().memory_offset_mb) << 20);
        memory
    }

    /// The console: a virtio-serial controller `serial0` (2 ports) and a `virtconsole`
    /// `console0` on a listening socket chardev `charconsole0` at `path`.
    fn append_console(&self, devices: &mut Vec<Device>, path: &Path) -> Result<()> {
        let mut serial = SerialController::new("serial0");
        serial.max_ports = Some(2);
        serial.virtio = self.base().virtio();
        devices.push(serial.into());
        let chardev = Chardev::new("charconsole0", CharBackend::server_socket(path));
        devices.push(CharDevice::console("console0", chardev).into());
        Ok(())
    }

    /// The rootfs image. Default: a virtio-blk disk (backends with NVDIMM support override).
    fn append_image(&self, devices: &mut Vec<Device>, path: &Path) -> Result<()> {
        self.append_block_image(devices, path)
    }

    /// The rootfs image on virtio-blk: raw, read-only, shared.
    fn append_block_image(&self, devices: &mut Vec<Device>, path: &Path) -> Result<()> {
        image_size(path)?;
        let drive = BlockDrive {
            file: path.to_path_buf(),
            format: "raw".into(),
            id: truncate_id(format!("image-{}", stable_hex(&path.to_string_lossy()))),
            read_only: true,
            share_rw: true,
            index: 0,
        };
        self.append_block_device(devices, &drive)
    }

    /// The rootfs image on an NVDIMM (read-only and disarmed, as Kata 2.x does on x86).
    fn append_nvdimm_image(&self, devices: &mut Vec<Device>, path: &Path) -> Result<()> {
        devices.extend(self.base().nvdimm_image(path, true)?);
        Ok(())
    }

    /// The virtio-scsi controller `scsi0`, with an iothread when asked; returns the iothread
    /// (which the VM must also create).
    fn append_scsi_controller(
        &self,
        devices: &mut Vec<Device>,
        enable_iothreads: bool,
    ) -> Result<Option<IoThread>> {
        let mut controller = hvarch_devices::scsi::ScsiController::new("scsi0");
        controller.virtio = self.base().virtio();
        let iothread = enable_iothreads.then(|| IoThread::new("iothread-scsi0"));
        controller.iothread = iothread.as_ref().map(|t| t.id.clone());
        devices.push(controller.into());
        Ok(iothread)
    }

    /// Places the bridges on the root bus (slots 2, 3, …, chassis 1, 2, …, SHPC on) and
    /// appends a bridge device for each non-CCW bridge.
    fn append_bridges(&mut self, devices: &mut Vec<Device>) -> Result<()> {
        let bus = machine::root_bus(&self.base().machine_type);
        for (index, bridge) in self.base_mut().bridges.iter_mut().enumerate() {
            if bridge.bridge_type == BridgeType::Ccw {
                continue;
            }
            let slot = 2 + index as u32;
            bridge.addr = slot;
            let mut device = match bridge.bridge_type {
                BridgeType::Pcie => PciBridge::pcie(bridge.id.clone(), bus),
                _ => {
                    let chassis = u8::try_from(index + 1).unwrap_or(u8::MAX);
                    let mut device = PciBridge::pci(bridge.id.clone(), bus, chassis);
                    device.shpc = Some(true);
                    device
                }
            };
            device.addr = Some(pci_addr(slot)?);
            devices.push(device.into());
        }
        Ok(())
    }

    /// A 9p share (`multidevs=remap`).
    fn append_9p_volume(&self, devices: &mut Vec<Device>, volume: &Volume) -> Result<()> {
        devices.push(self.base().fs_9p_device(volume, Some(Multidevs::Remap))?);
        Ok(())
    }

    /// A `virtserialport` on a listening socket (Kata's agent channel).
    fn append_socket(&self, devices: &mut Vec<Device>, socket: &Socket) -> Result<()> {
        let chardev = Chardev::new(
            truncate_id(socket.id.clone()),
            CharBackend::server_socket(&socket.host_path),
        );
        let mut port = CharDevice::new(socket.device_id.clone(), chardev);
        port.name = Some(socket.name.clone());
        devices.push(port.into());
        Ok(())
    }

    /// A vhost-vsock device `vsock-<cid>`.
    fn append_vsock(&self, devices: &mut Vec<Device>, vsock: &VSock) -> Result<()> {
        let mut device = VsockDevice::new(
            format!("vsock-{}", vsock.context_id),
            u64::from(vsock.context_id),
        );
        device.vhostfd = vsock.vhost_fd.clone();
        device.virtio = self.base().virtio();
        devices.push(device.into());
        Ok(())
    }

    /// A virtio-net device `network-<n>` for `endpoint` (tap, or macvtap per the interworking
    /// model), with vhost-net when enabled.
    fn append_network(&mut self, devices: &mut Vec<Device>, endpoint: &NetEndpoint) -> Result<()> {
        let device = generic_network(self.base(), endpoint)?;
        self.base_mut().network_index += 1;
        devices.push(device.into());
        Ok(())
    }

    /// A virtio-blk disk for `drive` (AIO threads, Kata's `genericBlockDevice`).
    fn append_block_device(&self, devices: &mut Vec<Device>, drive: &BlockDrive) -> Result<()> {
        devices.push(generic_block_device(self.base(), drive)?.into());
        Ok(())
    }

    /// A vhost-user device (net, scsi, blk or fs) on a client socket `char-<id>`.
    fn append_vhost_user_device(
        &self,
        devices: &mut Vec<Device>,
        attrs: &VhostUserDevice,
    ) -> Result<()> {
        devices.push(generic_vhost_user(attrs)?.into());
        Ok(())
    }

    /// A VFIO passthrough device.
    fn append_vfio_device(&self, devices: &mut Vec<Device>, dev: &VfioDev) -> Result<()> {
        let mut device = VfioDevice::new(dev.id.clone(), VfioSource::Host(dev.bdf.clone()));
        device.vendor_id = dev.vendor_id;
        device.device_id = dev.device_id;
        device.bus = dev.bus.clone();
        devices.push(device.into());
        Ok(())
    }

    /// A virtio-rng device on an `rng-random` object.
    fn append_rng_device(&self, devices: &mut Vec<Device>, rng: &RngDev) -> Result<()> {
        let mut device = RngDevice::new(format!("{}-dev", rng.id), rng.id.clone());
        device.filename = Some(rng.filename.clone());
        device.virtio = self.base().virtio();
        devices.push(device.into());
        Ok(())
    }

    /// Takes a free slot for device `id` on a bridge of `bridge_type`.
    fn add_device_to_bridge(&mut self, id: &str, bridge_type: BridgeType) -> Result<BridgeSlot> {
        self.base_mut().bridges.add_device(id, bridge_type)
    }

    /// Frees device `id`'s bridge slot.
    fn remove_device_from_bridge(&mut self, id: &str) -> Result<()> {
        self.base_mut().bridges.remove_device(id)
    }

    /// The bridges.
    fn get_bridges(&self) -> &Bridges {
        &self.base().bridges
    }

    /// Replaces the bridges (restoring a saved VM).
    fn set_bridges(&mut self, bridges: Bridges) {
        self.base_mut().bridges = bridges;
    }

    /// Adds a bridge.
    fn add_bridge(&mut self, bridge: Bridge) {
        self.base_mut().bridges.push(bridge);
    }

    /// The pflash images to load.
    fn pflash(&self) -> Result<Vec<PathBuf>> {
        Ok(self.base().pflash.clone())
    }

    /// Sets the pflash images.
    fn set_pflash(&mut self, pflash: Vec<PathBuf>) {
        self.base_mut().pflash = pflash;
    }

    /// Adapts machine options and kernel parameters to the boot medium (Kata's
    /// `handleImagePath`): with an image and NVDIMM enabled, every supported machine gets the
    /// `nvdimm` option and the root is `/dev/pmem0p1` (with DAX where the backend mounts it
    /// so); with NVDIMM disabled the root is `/dev/vda1`. The systemd sets are added for
    /// images. With an initrd (no image) nothing changes.
    fn handle_image_path(&mut self, config: &HypervisorConfig) {
        if config.image_path.is_none() {
            return;
        }
        let base = self.base_mut();
        let root = if base.disable_nvdimm {
            RootDevice::VirtioBlk
        } else {
            for machine in &mut base.machines {
                let _ = machine.options.set("nvdimm", "on");
            }
            if base.spec.dax {
                RootDevice::NvdimmDax
            } else {
                RootDevice::Nvdimm
            }
        };
        base.kernel_params.extend(&kparams::root(root));
        base.kernel_params_non_debug
            .extend(&kparams::systemd_non_debug());
        base.kernel_params_debug.extend(&kparams::systemd_debug());
    }

    /// Whether guest memory can be hot-plugged (DIMMs).
    fn supports_guest_memory_hotplug(&self) -> bool {
        true
    }

    /// The migration capabilities to set before saving to or restoring from a template:
    /// `x-ignore-shared` (shared guest memory is not copied).
    fn migration_capabilities(&self) -> Vec<MigrationCapability> {
        vec![MigrationCapability {
            capability: "x-ignore-shared".into(),
            state: true,
        }]
    }

    /// `number` PCIe root ports `rp0`, `rp1`, … on `pcie.0` for hotplug. Machines without a
    /// PCIe root bus have none to offer: asking for ports there is an error (Kata 1.x ignored
    /// the setting silently, also on arm64 `virt`, where hvarch supports them).
    fn append_pcie_root_ports(&self, devices: &mut Vec<Device>, number: u32) -> Result<()> {
        if number == 0 {
            return Ok(());
        }
        let machine = &self.base().machine_type;
        if !machine::is_pcie_machine(machine) {
            return Err(hvarch_devices::Error::InvalidValue {
                what: "hypervisor",
                field: "pcie_root_ports",
                value: number.to_string(),
                reason: format!("machine {machine} has no PCIe root bus"),
            }
            .into());
        }
        for i in 0..number {
            let mut port = PcieRootPort::new(format!("rp{i}"));
            port.bus = machine::PCIE_ROOT_BUS.into();
            port.chassis = u8::try_from(i + 1).unwrap_or(u8::MAX);
            port.slot = u16::try_from(i).unwrap_or(u16::MAX);
            devices.push(port.into());
        }
        Ok(())
    }

    /// A vIOMMU: an `intel-iommu` (interrupt remapping, device IOTLB, caching mode) on `q35`;
    /// other machines have none.
    fn append_iommu(&self, devices: &mut Vec<Device>) -> Result<()> {
        let machine = &self.base().machine_type;
        if machine != machine::Q35 {
            return Err(ArchError::NoIommu {
                reason: format!("Machine Type {machine} does not support vIOMMU"),
            });
        }
        let mut iommu = IntelIommu::new();
        iommu.intremap = true;
        iommu.device_iotlb = true;
        iommu.caching_mode = true;
        devices.push(iommu.into());
        Ok(())
    }

    /// The most vCPUs a guest can have on this backend.
    fn max_vcpus(&self) -> u32 {
        self.base().spec.max_vcpus
    }

    /// How long to wait for a migration to complete.
    fn migration_wait_timeout(&self) -> Duration {
        self.base().spec.migration_wait
    }
}

fn pci_addr(slot: u32) -> Result<hvarch_devices::pci::PciAddr> {
    let slot = u8::try_from(slot).unwrap_or(u8::MAX);
    hvarch_devices::pci::PciAddr::slot_only(slot).map_err(|e| {
        hvarch_devices::Error::InvalidValue {
            what: "bridge",
            field: "addr",
            value: slot.to_string(),
            reason: e.to_string(),
        }
        .into()
    })
}

/// Kata's `genericNetwork`: a virtio-net device for a tap or macvtap endpoint.
fn generic_network(base: &ArchBase, endpoint: &NetEndpoint) -> Result<NetDevice> {
    let macvtap = match endpoint.kind {
        EndpointKind::Veth | EndpointKind::BridgedMacvlan | EndpointKind::Ipvlan => {
            endpoint.interworking == InterworkingModel::Macvtap
        }
        EndpointKind::Macvtap => true,
        EndpointKind::Tuntap => false,
        EndpointKind::Other => {
            return Err(hvarch_devices::Error::InvalidValue {
                what: "network",
                field: "kind",
                value: format!("{:?}", endpoint.kind),
                reason: "Unknown type for endpoint".into(),
            }
            .into())
        }
    };
    let vm_fds: Vec<FdArg> = endpoint.vm_fds.iter().cloned().map(FdArg::Owned).collect();
    let vhost_fds: Vec<FdArg> = endpoint
        .vhost_fds
        .iter()
        .cloned()
        .map(FdArg::Owned)
        .collect();
    let backend = if macvtap {
        NetBackend::Macvtap {
            fds: vm_fds,
            vhost: base.vhost,
            vhostfds: vhost_fds,
        }
    } else if vm_fds.is_empty() {
        NetBackend::Tap {
            ifname: endpoint.ifname.clone(),
            vhost: base.vhost,
            script: None,
            downscript: None,
            queues: None,
        }
    } else {
        NetBackend::TapFds {
            fds: vm_fds,
            vhost: base.vhost,
            vhostfds: vhost_fds,
        }
    };
    let id = format!("network-{}", base.network_index);
    let mut device = NetDevice::new(id.clone(), format!("{id}-netdev"), backend);
    device.mac = Some(endpoint.mac.clone());
    device.virtio = base.virtio();
    Ok(device)
}

/// Kata's `genericBlockDevice`: a virtio-blk disk with AIO threads.
fn generic_block_device(base: &ArchBase, drive: &BlockDrive) -> Result<BlockDevice> {
    if drive.file.as_os_str().is_empty() || drive.id.is_empty() || drive.format.is_empty() {
        return Err(hvarch_devices::Error::MissingField {
            what: "block drive",
            field: "file, id and format",
        }
        .into());
    }
    let format = match drive.format.as_str() {
        "raw" => BlockFormat::Raw,
        "qcow2" => BlockFormat::Qcow2,
        other => {
            return Err(hvarch_devices::Error::InvalidValue {
                what: "block drive",
                field: "format",
                value: other.to_owned(),
                reason: "expected raw or qcow2".into(),
            }
            .into())
        }
    };
    let id = truncate_id(drive.id.clone());
    let mut backend = BlockBackend::new(
        truncate_id(format!("{id}-node")),
        BlockProtocol::File {
            filename: drive.file.clone(),
        },
    );
    backend.format = format;
    backend.read_only = drive.read_only;
    backend.aio = Some(Aio::Threads);
    let mut device = BlockDevice::new(id, backend);
    device.share_rw = drive.share_rw;
    device.virtio = base.virtio();
    Ok(device)
}

/// Kata's vhost-user device attributes turned into a device.
fn generic_vhost_user(attrs: &VhostUserDevice) -> Result<dev_vhost_user::VhostUserDevice> {
    let chardev_id = truncate_id(format!("char-{}", attrs.dev_id));
    let kind = match attrs.kind {
        VhostUserKind::Net => dev_vhost_user::VhostUserKind::Net {
            netdev_id: truncate_id(format!("net-{}", attrs.dev_id)),
            mac: Some(
                attrs
                    .mac
                    .clone()
                    .ok_or(hvarch_devices::Error::MissingField {
                        what: "vhost-user net",
                        field: "mac",
                    })?,
            ),
            queues: None,
        },
        VhostUserKind::Scsi => dev_vhost_user::VhostUserKind::Scsi { num_queues: None },
        VhostUserKind::Blk => dev_vhost_user::VhostUserKind::Blk {
            num_queues: None,
            queue_size: None,
        },
        VhostUserKind::Fs => dev_vhost_user::VhostUserKind::Fs {
            tag: attrs
                .tag
                .clone()
                .ok_or(hvarch_devices::Error::MissingField {
                    what: "vhost-user fs",
                    field: "tag",
                })?,
            queue_size: None,
            num_request_queues: None,
        },
    };
    Ok(dev_vhost_user::VhostUserDevice::new(
        truncate_id(format!("vhost-user-{}", attrs.dev_id)),
        chardev_id,
        attrs.socket_path.clone(),
        kind,
    ))
}

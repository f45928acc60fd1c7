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

/// MiB Kata's `genericMemoryTopology` reserves above host memory in `maxmem` for the NVDIMM
/// image (clearcontainers#380).
pub const NVDIMM_RESERVE_MB: u64 = 1024;

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
    /// Where the rootfs image goes.
    pub rootfs: RootfsImage,
}

/// Where a backend puts the rootfs image (Kata's `handleImagePath` and `appendImage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootfsImage {
    /// On an NVDIMM unless `disable_nvdimm` (arm64, x86_64), mounted with DAX if `dax`.
    Nvdimm {
        /// Mount the root with `dax`.
        dax: bool,
    },
    /// Always a virtio-blk disk, whatever `disable_nvdimm` says (ppc64le, s390x).
    VirtioBlk,
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
        let disable_nvdimm = config.disable_nvdimm || spec.rootfs == RootfsImage::VirtioBlk;
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
            disable_nvdimm,
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
    /// virtio-ccw on `s390-ccw-virtio` (the device number is given later, by
    /// [`QemuArch::place_devices`]), virtio-pci elsewhere, with `disable-modern` when running
    /// nested (PCI only).
    pub fn virtio(&self) -> VirtioOpts {
        match self.machine_type.as_str() {
            machine::MICROVM => VirtioOpts::on(Transport::Mmio),
            machine::S390_CCW_VIRTIO => VirtioOpts::on(Transport::Ccw),
            _ => VirtioOpts {
                disable_modern: self.nested_run,
                ..VirtioOpts::default()
            },
        }
    }

    /// Gives every CCW device of `devices` a device number from the CCW bridges (what each
    /// of Kata's s390x `append*` does with `addDeviceToBridge`): a device whose `devno` is
    /// set reserves that slot; then every device without one takes the first free slot,
    /// keyed by its id, and gets `fe.<bridge addr>.<slot %04x>`. Devices on other
    /// transports are left alone.
    pub fn place_ccw_devices(&mut self, devices: &mut [Device]) -> Result<()> {
        let ccw = |device: &Device| {
            device
                .virtio()
                .is_some_and(|v| v.transport == Transport::Ccw)
        };
        // Given numbers first, so that the free slots handed out below skip them.
        for device in devices.iter().filter(|d| ccw(d)) {
            if let Some(devno) = device.virtio().and_then(|v| v.devno.as_deref()) {
                let id = device_id(device)?;
                self.bridges.reserve_ccw_devno(devno, id)?;
            }
        }
        for device in devices.iter_mut().filter(|d| ccw(d)) {
            if device.virtio().is_some_and(|v| v.devno.is_some()) {
                continue;
            }
            let id = device_id(device)?.to_owned();
            let slot = self.bridges.add_device(&id, BridgeType::Ccw)?;
            if let Some(virtio) = device.virtio_mut() {
                virtio.devno = Some(slot.ccw_devno()?);
            }
        }
        Ok(())
    }

    /// Kata's `genericMemoryTopology` (x86_64, ppc64le): `memory_mb` at boot, `slots` hotplug
    /// slots, and a ceiling of host memory + offset + [`NVDIMM_RESERVE_MB`].
    pub fn generic_memory_topology(
        &self,
        memory_mb: u64,
        host_memory_mb: u64,
        slots: u32,
    ) -> Memory {
        let mut memory = Memory::size(mib(memory_mb));
        memory.slots = Some(slots);
        memory.maxmem = Some(mib(host_memory_mb
            .saturating_add(self.memory_offset_mb)
            .saturating_add(NVDIMM_RESERVE_MB)));
        memory
    }

    /// Kata's `genericNetwork`: a virtio-net device `network-<n>` for a tap or macvtap
    /// endpoint (per the interworking model), with vhost-net if `vhost`.
    pub fn network_device(&self, endpoint: &NetEndpoint, vhost: bool) -> Result<NetDevice> {
        generic_network(self, endpoint, vhost)
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

/// The id a device is placed under (every device the arch layer builds has one).
fn device_id(device: &Device) -> Result<&str> {
    use hvarch_devices::QemuDevice;
    device.id().ok_or_else(|| {
        hvarch_devices::Error::MissingField {
            what: device.kind(),
            field: "id",
        }
        .into()
    })
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

/// `mb` MiB in bytes, saturating instead of overflowing (an absurd size is then refused by
/// the memory checks rather than wrapping to a small one).
pub fn mib(mb: u64) -> u64 {
    mb.saturating_mul(1 << 20)
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
        let mut memory = Memory::size(mib(memory_mb));
        memory.slots = Some(slots);
        memory.maxmem = Some(mib(
            host_memory_mb.saturating_add(self.base().memory_offset_mb)
        ));
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
        let base = self.base();
        let device = base.network_device(endpoint, base.vhost)?;
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

    /// Gives the cold-plugged `devices` (all of them, once built) the addresses the
    /// architecture assigns itself rather than QEMU. Default: none (QEMU numbers PCI slots).
    /// s390x overrides it: every CCW device gets its device number from a CCW bridge.
    fn place_devices(&mut self, devices: &mut [Device]) -> Result<()> {
        let _ = devices;
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
            match base.spec.rootfs {
                RootfsImage::Nvdimm { dax: true } => RootDevice::NvdimmDax,
                _ => RootDevice::Nvdimm,
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
fn generic_network(base: &ArchBase, endpoint: &NetEndpoint, vhost: bool) -> Result<NetDevice> {
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
            vhost,
            vhostfds: vhost_fds,
        }
    } else if vm_fds.is_empty() {
        NetBackend::Tap {
            ifname: endpoint.ifname.clone(),
            vhost,
            script: None,
            downscript: None,
            queues: None,
        }
    } else {
        NetBackend::TapFds {
            fds: vm_fds,
            vhost,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::argv;

    /// A backend with no overrides: every method is the base's.
    #[derive(Debug)]
    struct Generic(ArchBase);

    impl QemuArch for Generic {
        fn base(&self) -> &ArchBase {
            &self.0
        }
        fn base_mut(&mut self) -> &mut ArchBase {
            &mut self.0
        }
    }

    fn spec() -> ArchSpec {
        ArchSpec {
            guest_arch: GuestArch::X86_64,
            default_machine: machine::Q35,
            machines: [machine::PC, machine::Q35, machine::VIRT, machine::MICROVM]
                .iter()
                .map(|m| MachineSpec::new(m, "usb=off"))
                .collect(),
            qemu_paths: vec![
                (machine::PC, "/usr/bin/qemu-pc"),
                (machine::Q35, "/usr/bin/qemu-q35"),
            ],
            kernel_params: KernelParams::parse("console=hvc0").unwrap(),
            max_vcpus: 42,
            migration_wait: Duration::from_secs(5),
            rootfs: RootfsImage::Nvdimm { dax: true },
        }
    }

    fn generic(config: &HypervisorConfig) -> Generic {
        let mut arch = Generic(ArchBase::new(spec(), config).unwrap());
        arch.handle_image_path(config);
        arch
    }

    fn on(machine_type: &str) -> Generic {
        generic(&HypervisorConfig {
            machine_type: Some(machine_type.into()),
            ..HypervisorConfig::default()
        })
    }

    #[test]
    fn nesting_and_vhost_switches() {
        let mut arch = on("q35");
        assert!(!arch.run_nested());
        arch.enable_nesting_checks();
        assert!(arch.run_nested());
        let mut devices = Vec::new();
        arch.append_rng_device(
            &mut devices,
            &RngDev {
                id: "rng0".into(),
                filename: "/dev/urandom".into(),
            },
        )
        .unwrap();
        assert!(argv(&devices)[3].contains("disable-modern=on"));
        arch.disable_nesting_checks();
        assert!(!arch.run_nested());
        assert!(arch.base().vhost);
        arch.disable_vhost_net();
        assert!(!arch.base().vhost);
        arch.enable_vhost_net();
        assert!(arch.base().vhost);
    }

    /// A generic backend whose machine is `s390-ccw-virtio`, with one CCW bridge.
    fn ccw() -> Generic {
        let mut spec = spec();
        spec.default_machine = machine::S390_CCW_VIRTIO;
        spec.machines = vec![MachineSpec::new(machine::S390_CCW_VIRTIO, "")];
        let mut arch = Generic(ArchBase::new(spec, &HypervisorConfig::default()).unwrap());
        arch.base_mut().generic_bridges(1);
        arch
    }

    #[test]
    fn ccw_devices_are_numbered_from_the_ccw_bridge() {
        let mut arch = ccw();
        // Nesting never reaches CCW devices: disable-modern is a virtio-pci setting.
        arch.enable_nesting_checks();
        let mut devices = Vec::new();
        arch.append_console(&mut devices, Path::new("/run/vm/console.sock"))
            .unwrap();
        let rng = RngDev {
            id: "rng0".into(),
            filename: "/dev/urandom".into(),
        };
        arch.append_rng_device(&mut devices, &rng).unwrap();
        // Built, not yet placed: a CCW device without its number does not render.
        assert_eq!(devices[0].virtio().unwrap().transport, Transport::Ccw);
        assert!(devices[0].virtio().unwrap().devno.is_none());
        assert!(hvarch_devices::QemuDevice::parts(&devices[0])
            .unwrap_err()
            .to_string()
            .contains("devno"));
        // A device that brings its own number keeps it, and its slot is not handed out.
        let mut balloon = hvarch_devices::balloon::BalloonDevice::new("balloon0");
        balloon.virtio = VirtioOpts {
            devno: Some("fe.0.0002".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        devices.push(balloon.into());
        // The trait's default places nothing; the base's CCW placement is what s390x calls.
        arch.place_devices(&mut devices).unwrap();
        assert!(devices[0].virtio().unwrap().devno.is_none());
        arch.base_mut().place_ccw_devices(&mut devices).unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "virtio-serial-ccw,id=serial0,max_ports=2,devno=fe.0.0001",
                "-chardev",
                "socket,id=charconsole0,path=/run/vm/console.sock,server=on,wait=off",
                "-device",
                "virtconsole,chardev=charconsole0,id=console0",
                "-object",
                "rng-random,id=rng0,filename=/dev/urandom",
                "-device",
                "virtio-rng-ccw,id=rng0-dev,rng=rng0,devno=fe.0.0003",
                "-device",
                "virtio-balloon-ccw,id=balloon0,devno=fe.0.0002",
            ]
        );
        let bridge = arch.get_bridges().iter().next().unwrap();
        assert_eq!(
            bridge.devices.values().collect::<Vec<_>>(),
            ["serial0", "balloon0", "rng0-dev"]
        );
        // Placing again changes nothing (every device has its number and its slot).
        let before = devices.clone();
        arch.base_mut().place_ccw_devices(&mut devices).unwrap();
        assert_eq!(devices, before);
        // Without a CCW bridge there is nowhere to put a CCW device.
        let mut bare = ccw();
        bare.set_bridges(Bridges::new());
        let mut devices = Vec::new();
        bare.append_rng_device(&mut devices, &rng).unwrap();
        assert_eq!(
            bare.base_mut().place_ccw_devices(&mut devices).unwrap_err(),
            ArchError::NoBridges
        );
    }

    #[test]
    fn machine_and_path_lookup() {
        let arch = on("pc");
        assert_eq!(arch.machine().unwrap().machine_type, "pc");
        assert_eq!(arch.qemu_path().unwrap(), PathBuf::from("/usr/bin/qemu-pc"));
        assert_eq!(
            on("virt").qemu_path().unwrap_err().to_string(),
            "Unknown machine type: virt: no QEMU path known for it; set hypervisor_path"
        );
        let configured = generic(&HypervisorConfig {
            machine_type: Some("virt".into()),
            hypervisor_path: Some("/opt/qemu".into()),
            ..HypervisorConfig::default()
        });
        assert_eq!(configured.qemu_path().unwrap(), PathBuf::from("/opt/qemu"));
        let err = ArchBase::new(
            spec(),
            &HypervisorConfig {
                machine_type: Some("s390-ccw-virtio".into()),
                ..HypervisorConfig::default()
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unrecognised machine type: s390-ccw-virtio (supported: pc, q35, virt, microvm)"
        );
        // Default machine, and machine_accelerators appended to the options.
        let arch = generic(&HypervisorConfig {
            machine_accelerators: "nosmm=on".into(),
            ..HypervisorConfig::default()
        });
        let machine = arch.machine().unwrap();
        assert_eq!(machine.machine_type, "q35");
        assert_eq!(machine.options.get("nosmm"), Some("on"));
        assert_eq!(machine.options.get("usb"), Some("off"));
    }

    #[test]
    fn kernel_parameters_debug_and_not() {
        let arch = on("q35");
        assert_eq!(
            arch.kernel_parameters(false).to_string(),
            "console=hvc0 quiet"
        );
        assert_eq!(
            arch.kernel_parameters(true).to_string(),
            "console=hvc0 debug"
        );
    }

    #[test]
    fn image_path_handling() {
        let file = crate::testing::TempImage::new("img-handling.img", 4096);
        let image = file.path().to_path_buf();
        let arch = generic(&HypervisorConfig {
            image_path: Some(image.clone()),
            ..HypervisorConfig::default()
        });
        for machine in &arch.base().machines {
            assert_eq!(machine.options.get("nvdimm"), Some("on"));
        }
        assert_eq!(
            arch.kernel_parameters(false).to_string(),
            "console=hvc0 root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro \
             rootfstype=ext4 quiet systemd.show_status=false"
        );
        assert_eq!(
            arch.kernel_parameters(true).to_string(),
            "console=hvc0 root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro \
             rootfstype=ext4 debug systemd.show_status=true systemd.log_level=debug"
        );
        // The shared constants are untouched (Kata's fix e2661943).
        assert!(spec()
            .machines
            .iter()
            .all(|m| m.options.get("nvdimm").is_none()));

        let no_nvdimm = generic(&HypervisorConfig {
            image_path: Some(image),
            disable_nvdimm: true,
            ..HypervisorConfig::default()
        });
        assert!(no_nvdimm.machine().unwrap().options.get("nvdimm").is_none());
        assert!(no_nvdimm
            .kernel_parameters(false)
            .to_string()
            .contains("root=/dev/vda1"));

        let initrd = generic(&HypervisorConfig {
            initrd_path: Some("/boot/initrd".into()),
            ..HypervisorConfig::default()
        });
        assert!(initrd.machine().unwrap().options.get("nvdimm").is_none());
        assert_eq!(
            initrd.kernel_parameters(false).to_string(),
            "console=hvc0 quiet"
        );
    }

    #[test]
    fn capabilities_topology_cpu_memory() {
        let arch = on("q35");
        assert_eq!(
            arch.capabilities(),
            Capabilities {
                block_device_hotplug: true,
                multi_queue: true,
                fs_sharing: true
            }
        );
        assert_eq!(
            arch.cpu_topology(2, 8),
            Smp {
                cpus: 2,
                sockets: Some(8),
                dies: None,
                cores: Some(1),
                threads: Some(1),
                maxcpus: Some(8)
            }
        );
        assert_eq!(arch.cpu_model().model, "host");
        let tcg = generic(&HypervisorConfig {
            accelerator: Accelerator::Tcg,
            cpu_features: vec!["pmu=off".into()],
            ..HypervisorConfig::default()
        });
        assert_eq!(tcg.cpu_model().model, "max");
        assert_eq!(tcg.cpu_model().features, ["pmu=off"]);
        let memory = arch.memory_topology(2048, 16384, 10);
        assert_eq!(memory.size, 2048 << 20);
        assert_eq!(memory.slots, Some(10));
        assert_eq!(memory.maxmem, Some(16384 << 20));
        let offset = generic(&HypervisorConfig {
            memory_offset_mb: 512,
            ..HypervisorConfig::default()
        });
        assert_eq!(
            offset.memory_topology(2048, 16384, 10).maxmem,
            Some((16384 + 512) << 20)
        );
        assert_eq!(arch.max_vcpus(), 42);
        assert_eq!(arch.migration_wait_timeout(), Duration::from_secs(5));
        assert!(arch.supports_guest_memory_hotplug());
        assert_eq!(
            arch.migration_capabilities(),
            [MigrationCapability {
                capability: "x-ignore-shared".into(),
                state: true
            }]
        );
    }

    #[test]
    fn console_is_virtio_serial_and_virtconsole() {
        let mut devices = Vec::new();
        on("q35")
            .append_console(&mut devices, Path::new("/run/vm/console.sock"))
            .unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "virtio-serial-pci,id=serial0,max_ports=2",
                "-chardev",
                "socket,id=charconsole0,path=/run/vm/console.sock,server=on,wait=off",
                "-device",
                "virtconsole,chardev=charconsole0,id=console0",
            ]
        );
    }

    #[test]
    fn block_and_nvdimm_images() {
        let file = crate::testing::TempImage::new("rootfs.img", 1 << 20);
        let image = file.path().to_path_buf();
        let arch = on("q35");
        let mut devices = Vec::new();
        arch.append_image(&mut devices, &image).unwrap();
        let args = argv(&devices);
        let id = truncate_id(format!("image-{}", stable_hex(&image.to_string_lossy())));
        assert_eq!(args[0], "-blockdev");
        assert!(args[1].starts_with(&format!("driver=raw,node-name={id}-node,read-only=on")));
        assert!(args[1].ends_with("file.aio=threads"));
        assert_eq!(
            args[3],
            format!("virtio-blk-pci,id={id},drive={id}-node,share-rw=on")
        );
        assert!(arch
            .append_image(&mut devices, Path::new("/nonexistent/rootfs.img"))
            .unwrap_err()
            .to_string()
            .contains("cannot read the image"));

        let mut devices = Vec::new();
        arch.append_nvdimm_image(&mut devices, &image).unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-object",
                &format!(
                    "memory-backend-file,id=mem0,size=1M,mem-path={},readonly=on",
                    image.display()
                ),
                "-device",
                "nvdimm,id=nv0,memdev=mem0,unarmed=on",
            ]
        );
    }

    #[test]
    fn scsi_controller_with_and_without_iothread() {
        let arch = on("q35");
        let mut devices = Vec::new();
        assert!(arch
            .append_scsi_controller(&mut devices, false)
            .unwrap()
            .is_none());
        assert_eq!(argv(&devices), ["-device", "virtio-scsi-pci,id=scsi0"]);
        let mut devices = Vec::new();
        let iothread = arch
            .append_scsi_controller(&mut devices, true)
            .unwrap()
            .unwrap();
        assert_eq!(iothread.id, "iothread-scsi0");
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "virtio-scsi-pci,id=scsi0,iothread=iothread-scsi0"
            ]
        );
    }

    #[test]
    fn bridges_base_and_generic() {
        // Base: PCI bridges whatever the machine.
        let mut arch = on("microvm");
        arch.bridges(2);
        assert_eq!(arch.get_bridges().len(), 2);
        assert!(arch
            .get_bridges()
            .iter()
            .all(|b| b.bridge_type == BridgeType::Pci));

        // Generic: by machine kind.
        for (machine_type, expected) in [
            ("q35", Some(BridgeType::Pci)),
            ("pc", Some(BridgeType::Pci)),
            ("virt", Some(BridgeType::Pci)),
            ("microvm", None),
        ] {
            let mut arch = on(machine_type);
            arch.base_mut().generic_bridges(1);
            let kinds: Vec<BridgeType> = arch.get_bridges().iter().map(|b| b.bridge_type).collect();
            assert_eq!(
                kinds,
                expected.into_iter().collect::<Vec<_>>(),
                "{machine_type}"
            );
        }

        let mut arch = on("virt");
        arch.bridges(2);
        let mut devices = Vec::new();
        arch.append_bridges(&mut devices).unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=on,addr=02",
                "-device",
                "pci-bridge,bus=pcie.0,id=pci-bridge-1,chassis_nr=2,shpc=on,addr=03",
            ]
        );
        let mut arch = on("pc");
        arch.bridges(1);
        let mut devices = Vec::new();
        arch.append_bridges(&mut devices).unwrap();
        assert!(argv(&devices)[1].starts_with("pci-bridge,bus=pci.0,"));

        // Slot allocation through the trait, and the guest path.
        let slot = arch.add_device_to_bridge("blk0", BridgeType::Pci).unwrap();
        assert_eq!((slot.bridge_id.as_str(), slot.slot), ("pci-bridge-0", 1));
        assert_eq!(slot.pci_path().unwrap().to_string(), "02/01");
        arch.remove_device_from_bridge("blk0").unwrap();
        assert!(arch.remove_device_from_bridge("blk0").is_err());
        arch.add_bridge(Bridge::new(BridgeType::Pci, "extra", 9));
        assert_eq!(arch.get_bridges().len(), 2);
        arch.set_bridges(Bridges::new());
        assert!(arch.get_bridges().is_empty());
    }

    #[test]
    fn nine_p_volumes() {
        let arch = on("q35");
        let mut devices = Vec::new();
        let volume = Volume {
            mount_tag: "a-long-mount-tag-for-tests".into(),
            host_path: "/srv/share".into(),
        };
        arch.append_9p_volume(&mut devices, &volume).unwrap();
        let args = argv(&devices);
        // extra-9p-<tag> cut to 31 bytes.
        assert_eq!(
            args[1],
            "local,id=extra-9p-a-long-mount-tag-for-t,path=/srv/share,security_model=none,multidevs=remap"
        );
        assert!(args[3].contains("mount_tag=a-long-mount-tag-for-tests"));
        let empty = Volume {
            mount_tag: String::new(),
            host_path: "/srv".into(),
        };
        assert!(arch.append_9p_volume(&mut devices, &empty).is_err());
    }

    #[test]
    fn socket_vsock_rng_vfio_vhost_user() {
        let arch = on("q35");
        let mut devices = Vec::new();
        arch.append_socket(
            &mut devices,
            &Socket {
                device_id: "channel0".into(),
                id: "charch0".into(),
                host_path: "/run/vm/kata.sock".into(),
                name: "agent.channel.0".into(),
            },
        )
        .unwrap();
        arch.append_vsock(
            &mut devices,
            &VSock {
                context_id: 3,
                vhost_fd: None,
            },
        )
        .unwrap();
        arch.append_rng_device(
            &mut devices,
            &RngDev {
                id: "rng0".into(),
                filename: "/dev/urandom".into(),
            },
        )
        .unwrap();
        arch.append_vfio_device(
            &mut devices,
            &VfioDev {
                id: "vfio-0".into(),
                bdf: "0000:02:00.0".into(),
                vendor_id: None,
                device_id: None,
                bus: Some("rp0".into()),
            },
        )
        .unwrap();
        arch.append_vhost_user_device(
            &mut devices,
            &VhostUserDevice {
                kind: VhostUserKind::Fs,
                socket_path: "/run/vm/vhost-fs.sock".into(),
                dev_id: "fs0".into(),
                mac: None,
                tag: Some("kataShared".into()),
            },
        )
        .unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-chardev",
                "socket,id=charch0,path=/run/vm/kata.sock,server=on,wait=off",
                "-device",
                "virtserialport,chardev=charch0,id=channel0,name=agent.channel.0",
                "-device",
                "vhost-vsock-pci,id=vsock-3,guest-cid=3",
                "-object",
                "rng-random,id=rng0,filename=/dev/urandom",
                "-device",
                "virtio-rng-pci,id=rng0-dev,rng=rng0",
                "-device",
                "vfio-pci,id=vfio-0,host=0000:02:00.0,bus=rp0",
                "-chardev",
                "socket,id=char-fs0,path=/run/vm/vhost-fs.sock",
                "-device",
                "vhost-user-fs-pci,id=vhost-user-fs0,chardev=char-fs0,tag=kataShared",
            ]
        );
        let no_tag = VhostUserDevice {
            kind: VhostUserKind::Fs,
            socket_path: "/s".into(),
            dev_id: "x".into(),
            mac: None,
            tag: None,
        };
        assert!(arch
            .append_vhost_user_device(&mut devices, &no_tag)
            .is_err());
    }

    #[test]
    fn network_devices_are_numbered() {
        let mut arch = on("q35");
        let mut devices = Vec::new();
        let tap = NetEndpoint {
            kind: EndpointKind::Tuntap,
            interworking: InterworkingModel::TcFilter,
            ifname: "tap0".into(),
            mac: "02:00:ca:fe:00:01".into(),
            vm_fds: Vec::new(),
            vhost_fds: Vec::new(),
        };
        arch.append_network(&mut devices, &tap).unwrap();
        arch.append_network(&mut devices, &tap).unwrap();
        let args = argv(&devices);
        assert_eq!(
            args[1],
            "tap,id=network-0-netdev,vhost=on,ifname=tap0,downscript=no,script=no"
        );
        assert_eq!(
            args[3],
            "virtio-net-pci,id=network-0,netdev=network-0-netdev,mac=02:00:ca:fe:00:01"
        );
        assert!(args[5].contains("id=network-1-netdev"));
        assert_eq!(arch.base().network_index, 2);
        let other = NetEndpoint {
            kind: EndpointKind::Other,
            ..tap
        };
        assert!(arch
            .append_network(&mut devices, &other)
            .unwrap_err()
            .to_string()
            .contains("Unknown type for endpoint"));
        assert_eq!(arch.base().network_index, 2);
    }

    #[test]
    fn block_devices() {
        let arch = on("q35");
        let mut devices = Vec::new();
        let drive = BlockDrive {
            file: "/var/lib/disk.qcow2".into(),
            format: "qcow2".into(),
            id: "drive-with-a-name-longer-than-thirty-one".into(),
            read_only: false,
            share_rw: true,
            index: 0,
        };
        arch.append_block_device(&mut devices, &drive).unwrap();
        let args = argv(&devices);
        assert_eq!(
            args[1],
            "driver=qcow2,node-name=drive-with-a-name-longer-than-t,file.driver=file,\
             file.filename=/var/lib/disk.qcow2,file.aio=threads"
        );
        assert!(args[3].starts_with("virtio-blk-pci,id=drive-with-a-name-longer-than-t,"));
        for broken in [
            BlockDrive {
                file: PathBuf::new(),
                ..drive.clone()
            },
            BlockDrive {
                id: String::new(),
                ..drive.clone()
            },
            BlockDrive {
                format: "vmdk".into(),
                ..drive.clone()
            },
        ] {
            assert!(arch.append_block_device(&mut devices, &broken).is_err());
        }
    }

    #[test]
    fn root_ports_and_iommu() {
        let mut devices = Vec::new();
        on("virt").append_pcie_root_ports(&mut devices, 2).unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=0,multifunction=off",
                "-device",
                "pcie-root-port,id=rp1,bus=pcie.0,chassis=2,slot=1,multifunction=off",
            ]
        );
        on("pc").append_pcie_root_ports(&mut devices, 0).unwrap();
        assert!(on("pc")
            .append_pcie_root_ports(&mut devices, 1)
            .unwrap_err()
            .to_string()
            .contains("machine pc has no PCIe root bus"));

        let mut devices = Vec::new();
        on("q35").append_iommu(&mut devices).unwrap();
        assert_eq!(
            argv(&devices),
            [
                "-device",
                "intel-iommu,intremap=on,device-iotlb=on,caching-mode=on"
            ]
        );
        assert_eq!(
            on("pc").append_iommu(&mut devices).unwrap_err().to_string(),
            "Machine Type pc does not support vIOMMU"
        );
    }

    #[test]
    fn microvm_devices_use_mmio() {
        let arch = on("microvm");
        let mut devices = Vec::new();
        arch.append_console(&mut devices, Path::new("/c.sock"))
            .unwrap();
        assert_eq!(
            argv(&devices)[1],
            "virtio-serial-device,id=serial0,max_ports=2"
        );
    }

    #[test]
    fn pflash_is_passed_through() {
        let mut arch = on("q35");
        assert!(arch.pflash().unwrap().is_empty());
        arch.set_pflash(vec!["/a".into()]);
        assert_eq!(arch.pflash().unwrap(), [PathBuf::from("/a")]);
    }

    #[test]
    fn memory_sizes_saturate() {
        let memory = on("q35").memory_topology(u64::MAX, u64::MAX, 1);
        assert_eq!(memory.size, u64::MAX);
        assert_eq!(memory.maxmem, Some(u64::MAX));
        let generic = on("q35")
            .base()
            .generic_memory_topology(2048, u64::MAX - 1, 1);
        assert_eq!(generic.maxmem, Some(u64::MAX));
        let generic = on("q35").base().generic_memory_topology(2048, 4096, 3);
        assert_eq!(
            (generic.size, generic.slots, generic.maxmem),
            (2048 << 20, Some(3), Some((4096 + NVDIMM_RESERVE_MB) << 20))
        );
        assert_eq!(mib(2), 2 << 20);
    }

    #[test]
    fn ids_are_truncated_on_char_boundaries() {
        assert_eq!(truncate_id("a".repeat(40)).len(), 31);
        assert_eq!(truncate_id("short".into()), "short");
        assert_eq!(stable_hex("x"), stable_hex("x"));
        assert_ne!(stable_hex("x"), stable_hex("y"));
        assert_eq!(stable_hex("x").len(), 16);
    }
}

//! Kata's hotplug flows over the generic engine: each builds its device with the arch backend
//! (the same builder as cold plug) and plugs it, or drives a few QMP steps of its own (vCPUs,
//! DIMMs, virtio-mem, the balloon). See [`Hotplugger`](super::Hotplugger) for each flow.

use std::time::Duration;

use hvarch_arch::guest_arch::GuestArch;
use hvarch_arch::resources::{BlockDrive, NetEndpoint, VfioDev, VhostUserDevice, VhostUserKind};
use hvarch_arch::settings::BlockDriver;
use hvarch_devices::cpu::CpuDevice;
use hvarch_devices::memory::{MemoryBackend, MemoryBackendKind, MemoryDevice, MemoryDeviceKind};
use hvarch_devices::scsi::ScsiDisk;
use hvarch_devices::transport::Transport;
use hvarch_devices::{Device, QemuDevice};
use hvarch_qmp::commands;
use serde_json::Value;

use super::engine::Flows;
use super::{step_error, HotplugError, HotplugResult, HotplugState, Placement, Plugged};
use crate::QemuArch;

/// A device built for a flow, and where it goes.
pub(super) type Built = HotplugResult<(Device, Placement)>;

/// The single device the arch backend appends for `what` (built with `append`).
fn build(
    arch: &mut dyn QemuArch,
    what: &str,
    append: impl FnOnce(&mut dyn QemuArch, &mut Vec<Device>) -> hvarch_arch::Result<()>,
) -> HotplugResult<Device> {
    let mut built = Vec::new();
    append(arch, &mut built).map_err(|source| HotplugError::Arch {
        device: what.to_owned(),
        source,
    })?;
    built.pop().ok_or_else(|| HotplugError::Invalid {
        what: "hotplug",
        reason: format!("the arch backend built no device for {what}"),
    })
}

/// [`build`], for a flow expecting a `Device::$variant`.
macro_rules! build_as {
    ($variant:ident, $flow:literal, $arch:expr, $what:expr, $append:expr) => {
        match build($arch, $what, $append)? {
            Device::$variant(device) => device,
            other => {
                return Err(HotplugError::Invalid {
                    what: $flow,
                    reason: format!("the arch backend built a {} device", other.kind()),
                })
            }
        }
    };
}

/// [`Hotplugger::add_block`](super::Hotplugger::add_block)'s device.
pub(super) fn block(
    arch: &mut dyn QemuArch,
    state: &HotplugState,
    drive: &BlockDrive,
    driver: BlockDriver,
    placement: Placement,
) -> Built {
    let name = format!("block drive {}", drive.id);
    if driver == BlockDriver::Nvdimm {
        let nvdimm = nvdimm_drive(drive).map_err(|reason| HotplugError::Invalid {
            what: "add_block",
            reason,
        })?;
        return Ok((nvdimm.into(), Placement::AsIs));
    }
    let mut disk = build_as!(Block, "add_block", arch, &name, |arch, built| arch
        .append_block_device(built, drive));
    disk.id = format!("virtio-{}", drive.id);
    disk.backend.node_name = drive.id.clone();
    disk.share_rw = true;
    match driver {
        BlockDriver::VirtioBlk => Ok((disk.into(), placement)),
        BlockDriver::VirtioBlkCcw => {
            disk.virtio.transport = Transport::Ccw;
            disk.virtio.disable_modern = false;
            Ok((disk.into(), placement))
        }
        BlockDriver::VirtioScsi => {
            let bus = state
                .scsi_bus
                .clone()
                .ok_or_else(|| HotplugError::Placement {
                    device: name,
                    reason: "the VM has no virtio-scsi controller".into(),
                })?;
            let mut scsi = ScsiDisk::new(disk.id, bus, disk.backend);
            scsi.scsi_id = Some(drive.index / 256);
            scsi.lun = Some(drive.index % 256);
            scsi.share_rw = true;
            Ok((scsi.into(), Placement::AsIs))
        }
        other => Err(HotplugError::Invalid {
            what: "add_block",
            reason: format!(
                "Block device {} not recognized: driver {other:?} cannot be hot-plugged",
                drive.id
            ),
        }),
    }
}

/// Kata's hot-plugged NVDIMM for `drive` (govmm's `ExecuteNVDIMMDeviceAdd`): a shared
/// `memory-backend-file` `nvdimmbackmem<id>` the size of the file (or block device) and an
/// `nvdimm` `nvdimm<id>` on it.
fn nvdimm_drive(drive: &BlockDrive) -> Result<MemoryDevice, String> {
    use std::io::{Seek, SeekFrom};
    // Seeking to the end gives a block device's size too (its metadata says 0).
    let size = std::fs::File::open(&drive.file)
        .and_then(|mut file| file.seek(SeekFrom::End(0)))
        .map_err(|e| format!("cannot size {}: {e}", drive.file.display()))?;
    let mut backend = MemoryBackend::file(format!("nvdimmbackmem{}", drive.id), size, &drive.file);
    backend.share = Some(true);
    if let MemoryBackendKind::File { readonly, .. } = &mut backend.kind {
        *readonly = drive.read_only;
    }
    let mut nvdimm = MemoryDevice::nvdimm(format!("nvdimm{}", drive.id), backend);
    if let MemoryDeviceKind::Nvdimm { unarmed, .. } = &mut nvdimm.kind {
        *unarmed = drive.read_only;
    }
    Ok(nvdimm)
}

/// [`Hotplugger::add_vhost_user`](super::Hotplugger::add_vhost_user)'s device.
pub(super) fn vhost_user(
    arch: &mut dyn QemuArch,
    attrs: &VhostUserDevice,
    placement: Placement,
) -> Built {
    if attrs.kind != VhostUserKind::Blk {
        return Err(HotplugError::Invalid {
            what: "add_vhost_user",
            reason: format!("Incorrect vhost-user device type found: {:?}", attrs.kind),
        });
    }
    let name = format!("vhost-user {}", attrs.dev_id);
    let mut device = build_as!(VhostUser, "add_vhost_user", arch, &name, |arch, built| arch
        .append_vhost_user_device(built, attrs));
    device.id = format!("virtio-{}", attrs.dev_id);
    Ok((device.into(), placement))
}

/// [`Hotplugger::add_vfio`](super::Hotplugger::add_vfio)'s device.
pub(super) fn vfio(arch: &mut dyn QemuArch, dev: &VfioDev, placement: Placement) -> Built {
    let name = format!("vfio {}", dev.id);
    let device = build(arch, &name, |arch, built| {
        arch.append_vfio_device(built, dev)
    })?;
    Ok((device, placement))
}

/// [`Hotplugger::add_network`](super::Hotplugger::add_network)'s device.
pub(super) fn network(
    arch: &mut dyn QemuArch,
    endpoint: &NetEndpoint,
    placement: Placement,
) -> Built {
    let ifname = &endpoint.ifname;
    let append =
        |arch: &mut dyn QemuArch, built: &mut Vec<Device>| arch.append_network(built, endpoint);
    let mut nic = build_as!(
        Net,
        "add_network",
        arch,
        &format!("network {ifname}"),
        append
    );
    (nic.id, nic.netdev_id) = (format!("virtio-{ifname}"), ifname.clone());
    Ok((nic.into(), placement))
}

impl Flows<'_> {
    /// See [`Hotplugger::add_cpus`](super::Hotplugger::add_cpus).
    pub(super) async fn add_cpus(&mut self, amount: u32) -> HotplugResult<u32> {
        let current = self.state.boot_vcpus + self.state.cpus.len() as u32;
        let room = self.state.max_vcpus.saturating_sub(current);
        if amount > room {
            tracing::warn!(amount, room, "vCPU hotplug clamped to the VM's maximum");
        }
        let amount = amount.min(room);
        if amount == 0 {
            return Ok(0);
        }
        let slots = match self.port.execute(commands::query_hotpluggable_cpus()).await {
            Ok(slots) => slots,
            Err(hvarch_qmp::Error::Command { desc, .. }) => {
                return Err(HotplugError::CpuHotplugUnsupported { reason: desc })
            }
            Err(source) => return Err(step_error("query-hotpluggable-cpus", source)),
        };
        let mut added = 0;
        for slot in slots.as_array().into_iter().flatten() {
            if added == amount {
                break;
            }
            if slot.get("qom-path").is_some() {
                continue;
            }
            let props = &slot["props"];
            let id_of = |key: &str| {
                props
                    .get(key)
                    .and_then(Value::as_u64)
                    .and_then(|v| u32::try_from(v).ok())
            };
            let cpu = CpuDevice {
                driver: slot["type"].as_str().unwrap_or_default().to_owned(),
                id: format!("cpu-{}", self.state.cpus.len()),
                socket_id: id_of("socket-id"),
                die_id: id_of("die-id"),
                core_id: id_of("core-id"),
                thread_id: id_of("thread-id"),
            };
            match self.plug(cpu.into(), Placement::AsIs).await {
                Ok(plugged) => {
                    self.state.cpus.push(plugged.id);
                    added += 1;
                }
                Err(e) => tracing::warn!(error = %e, "vCPU slot refused; trying the next"),
            }
        }
        if added < amount {
            return Err(HotplugError::CpusPartial {
                added,
                requested: amount,
            });
        }
        Ok(added)
    }

    /// See [`Hotplugger::remove_cpus`](super::Hotplugger::remove_cpus).
    pub(super) async fn remove_cpus(
        &mut self,
        amount: u32,
        timeout: Duration,
    ) -> HotplugResult<u32> {
        let mut removed = 0;
        while removed < amount {
            let Some(id) = self.state.cpus.last().cloned() else {
                break;
            };
            self.unplug(&id, timeout).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// See [`Hotplugger::add_memory`](super::Hotplugger::add_memory).
    pub(super) async fn add_memory(&mut self, size_mb: u64) -> HotplugResult<Plugged> {
        if size_mb == 0 {
            return Err(HotplugError::Invalid {
                what: "add_memory",
                reason: "the size must be more than 0 MiB".into(),
            });
        }
        let unsupported = |reason: String| Err(HotplugError::MemoryHotplugUnsupported { reason });
        if !self.arch.supports_guest_memory_hotplug() {
            return unsupported(format!(
                "machine {} does not support memory hotplug",
                self.arch.base().machine_type
            ));
        }
        if self.state.memory_slots == 0 {
            return unsupported(
                "the VM has no memory hotplug slots (hypervisor.memory_slots = 0)".into(),
            );
        }
        if self.arch.guest_arch() == GuestArch::Aarch64 && !self.state.firmware {
            return unsupported(
                "arm64 virt needs ACPI (the GED device) for pc-dimm, which needs UEFI firmware: \
                 load two pflash images (hypervisor.pflashes) or a bios"
                    .into(),
            );
        }
        let size = size_mb.checked_mul(1 << 20).ok_or(HotplugError::Invalid {
            what: "add_memory",
            reason: format!("{size_mb} MiB does not fit in 64 bits of bytes"),
        })?;
        let devices = self
            .port
            .execute(commands::query_memory_devices())
            .await
            .map_err(|source| step_error("query-memory-devices", source))?;
        let slot = devices
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["data"].get("slot").and_then(Value::as_u64))
            .max()
            .map_or(0, |s| s + 1);
        let mut backend = MemoryBackend::ram(format!("mem{slot}"), size);
        if let Some(ram) = &self.state.ram_backend {
            backend.kind = ram.kind.clone();
            backend.share = ram.share;
            backend.prealloc = ram.prealloc;
        }
        let dimm = MemoryDevice::pc_dimm(format!("dimm{slot}"), backend);
        self.plug(dimm.into(), Placement::AsIs).await
    }

    /// `qom-set requested-size` of virtio-mem device `id`.
    pub(super) async fn resize_virtio_mem(&mut self, id: &str, bytes: u64) -> HotplugResult<()> {
        let call = commands::qom_set(
            &format!("/machine/peripheral/{id}"),
            "requested-size",
            bytes,
        );
        self.port
            .execute(call)
            .await
            .map(drop)
            .map_err(|source| step_error(format!("qom-set {id} requested-size {bytes}"), source))
    }

    /// `balloon {"value": bytes}`.
    pub(super) async fn balloon(&mut self, bytes: u64) -> HotplugResult<()> {
        self.port
            .execute(commands::balloon(bytes))
            .await
            .map(drop)
            .map_err(|source| step_error(format!("balloon {bytes}"), source))
    }
}

//! The generic hotplug engine: placement, `getfd`, each part's QMP command, the step-by-step
//! rollback, unplug, and the completion of pending removals. Written once as `async fn`s over
//! an engine [`Port`] (see [`crate::engine`]); every driver runs the same code.

use std::collections::BTreeSet;
use std::time::Duration;

use hvarch_arch::bridge::{BridgeType, PciPath};
use hvarch_devices::fd::QmpFdNames;
use hvarch_devices::memory::{MemoryDevice, MemoryDeviceKind};
use hvarch_devices::part::{Part, QmpCall};
use hvarch_devices::pci::PciAddr;
use hvarch_devices::transport::Transport;
use hvarch_devices::{Device, QemuDevice};
use hvarch_qmp::{commands, Command, EventFilter};
use serde_json::{json, Value};

use super::{step_error, HotplugError, HotplugResult, HotplugState, Location, Placement, Plugged};
use crate::engine::Port;
use crate::QemuArch;

/// What a hotplug flow works on: the engine's port, the arch backend (bridge slots) and the
/// VM's [`HotplugState`].
pub(super) struct Flows<'a> {
    pub(super) port: Port,
    pub(super) arch: &'a mut dyn QemuArch,
    pub(super) state: &'a mut HotplugState,
    /// How long a rollback waits for `DEVICE_DELETED`.
    pub(super) rollback_timeout: Duration,
}

/// A step's name for errors: `device_add virtio-drive0`.
fn step_name(call: &QmpCall) -> String {
    let id = ["id", "node-name", "fdname"]
        .iter()
        .find_map(|k| call.arguments.get(*k).and_then(Value::as_str));
    match id {
        Some(id) => format!("{} {id}", call.command),
        None => call.command.to_owned(),
    }
}

fn command(call: &QmpCall) -> Command {
    Command::new(call.command, call.arguments.clone())
}

pub(super) fn describe(device: &Device) -> String {
    match device.id() {
        Some(id) => format!("{} {id}", device.kind()),
        None => device.kind().to_owned(),
    }
}

/// QEMU no longer has the device (`device_del` of an unknown id).
fn gone(error: &hvarch_qmp::Error) -> bool {
    matches!(error, hvarch_qmp::Error::Command { class, .. } if class == "DeviceNotFound")
}

/// QEMU took the `device_del` (or may have) but did not confirm the removal: it timed out,
/// or the device is already being unplugged (QEMU refuses a second request until the guest
/// answered the first or 5 s of guest time passed).
fn unconfirmed(error: &hvarch_qmp::Error) -> bool {
    match error {
        hvarch_qmp::Error::Timeout { .. } => true,
        hvarch_qmp::Error::Command { desc, .. } => desc.contains("in the process of unplug"),
        _ => false,
    }
}

/// Sets a PCI device's bus and address.
fn set_pci_placement(
    device: &mut Device,
    bus: Option<String>,
    addr: Option<PciAddr>,
) -> Result<(), String> {
    macro_rules! place {
        ($d:expr) => {{
            $d.bus = bus;
            $d.addr = addr;
        }};
    }
    match device {
        Device::Block(d) => place!(d),
        Device::Net(d) => place!(d),
        Device::VhostUser(d) => place!(d),
        Device::Vfio(d) => place!(d),
        Device::Balloon(d) => place!(d),
        Device::Rng(d) => place!(d),
        Device::Vsock(d) => place!(d),
        Device::ScsiController(d) => place!(d),
        Device::SerialController(d) => place!(d),
        Device::MemoryDevice(MemoryDevice {
            kind: MemoryDeviceKind::VirtioMem {
                bus: b, addr: a, ..
            },
            ..
        }) => {
            *b = bus;
            *a = addr;
        }
        other => {
            return Err(format!(
                "a {} is not placed on a PCI bus; use Placement::AsIs",
                other.kind()
            ))
        }
    }
    Ok(())
}

/// The slot of device `qdev_id` on a root bus, from a `query-pci` reply.
fn root_bus_slot(reply: &Value, qdev_id: &str) -> Option<u32> {
    reply
        .as_array()?
        .iter()
        .filter_map(|bus| bus.get("devices").and_then(Value::as_array))
        .flatten()
        .find(|d| d.get("qdev_id").and_then(Value::as_str) == Some(qdev_id))
        .and_then(|d| d.get("slot").and_then(Value::as_u64))
        .and_then(|s| u32::try_from(s).ok())
}

/// A slot number as a PCI address (function 0).
fn slot_addr(slot: u32) -> Option<PciAddr> {
    u8::try_from(slot)
        .ok()
        .and_then(|s| PciAddr::slot_only(s).ok())
}

/// What the placement step decided.
struct Placed {
    location: Location,
    bus: Option<String>,
    addr: Option<PciAddr>,
    path: Option<PciPath>,
    set: bool,
    /// A CCW device's number (a CCW bridge slot): set instead of a bus and address.
    devno: Option<String>,
}

/// A failed plug after its rollback: the error, and the removals QEMU did not confirm (the
/// device is then a pending removal).
struct Failed {
    error: HotplugError,
    pending: Option<Vec<QmpCall>>,
}

impl Flows<'_> {
    /// Completes the removal of every known device whose `DEVICE_DELETED` arrived since the
    /// last call (a pending removal, or a device the guest ejected): its backends are removed
    /// and its place freed. Errors are logged: they belong to no caller.
    pub(super) async fn settle(&mut self) {
        for event in self.port.take_deleted().await {
            let Some(id) = event.data.get("device").and_then(Value::as_str) else {
                continue;
            };
            if self.state.knows(id) {
                tracing::info!(
                    device = id,
                    "QEMU deleted the device; completing its removal"
                );
                if let Err(e) = self.complete(id, |_| true).await {
                    tracing::warn!(device = id, error = %e, "completing a removal failed");
                }
            }
        }
    }

    /// Hot-plugs `device` at `placement` (see the [module docs](super)).
    pub(super) async fn plug(
        &mut self,
        mut device: Device,
        placement: Placement,
    ) -> HotplugResult<Plugged> {
        let name = describe(&device);
        let id = device
            .id()
            .ok_or_else(|| HotplugError::Placement {
                device: name.clone(),
                reason: "a hot-plugged device needs an id".into(),
            })?
            .to_owned();
        if self.state.plugged.contains_key(&id) {
            return Err(HotplugError::AlreadyPlugged { id });
        }
        if self.state.pending_removals.contains_key(&id) {
            return Err(HotplugError::RemovalPending { id });
        }
        let ccw = device
            .virtio()
            .is_some_and(|v| v.transport == Transport::Ccw);
        let placed = self.place(&id, &name, placement, ccw).await?;
        match self.plug_placed(&mut device, &id, &name, &placed).await {
            Ok(plugged) => {
                self.state.insert(plugged.clone());
                Ok(plugged)
            }
            Err(Failed {
                error,
                pending: Some(removal),
            }) => {
                tracing::warn!(
                    device = %id,
                    "the rollback's device_del was not confirmed: the device stays a pending \
                     removal, its place and backends kept until QEMU deletes it"
                );
                self.state.insert_pending(Plugged {
                    id: id.clone(),
                    kind: device.kind(),
                    location: placed.location,
                    pci_path: placed.path,
                    removal,
                    virtio_mem: is_virtio_mem(&device),
                    device,
                });
                Err(error)
            }
            Err(Failed { error, .. }) => {
                self.free_location(&placed.location, &id);
                Err(error)
            }
        }
    }

    /// Takes a place for device `id` (a root port or a bridge slot) and computes its path.
    /// A CCW device (`ccw`) goes to a CCW bridge slot, which gives its device number.
    async fn place(
        &mut self,
        id: &str,
        name: &str,
        placement: Placement,
        ccw: bool,
    ) -> HotplugResult<Placed> {
        let placement = match placement {
            Placement::Auto if ccw => Placement::Bridge,
            Placement::Auto if !self.state.free_root_ports().is_empty() => Placement::RootPort,
            Placement::Auto => Placement::Bridge,
            other => other,
        };
        let given = |bus, addr| Placed {
            location: Location::AsGiven,
            bus,
            addr,
            path: None,
            set: true,
            devno: None,
        };
        match placement {
            Placement::AsIs => Ok(Placed {
                set: false,
                ..given(None, None)
            }),
            Placement::Bus { bus, addr } => Ok(given(Some(bus), addr)),
            Placement::RootBus => Ok(Placed {
                location: Location::RootBus,
                ..given(None, None)
            }),
            Placement::Bridge => self.place_on_bridge(id, name, ccw),
            Placement::RootPort => {
                let port = self.free_root_port(name)?;
                let slot = self.root_port_slot(&port, name).await?;
                let path = PciPath::new(&[slot, 0]).map_err(|source| HotplugError::Arch {
                    device: name.to_owned(),
                    source,
                })?;
                self.state.port_users.insert(port.clone(), id.to_owned());
                Ok(Placed {
                    location: Location::RootPort { port: port.clone() },
                    bus: Some(port),
                    addr: None,
                    path: Some(path),
                    set: true,
                    devno: None,
                })
            }
            Placement::Auto => unreachable!("resolved above"),
        }
    }

    /// A slot on a bridge: a CCW bridge for a CCW device (the slot is its device number),
    /// else the first PCI(e) bridge.
    fn place_on_bridge(&mut self, id: &str, name: &str, ccw: bool) -> HotplugResult<Placed> {
        let bridge_type = if ccw {
            BridgeType::Ccw
        } else {
            self.arch
                .get_bridges()
                .iter()
                .map(|b| b.bridge_type)
                .find(|t| *t != BridgeType::Ccw)
                .unwrap_or(BridgeType::Pci)
        };
        let arch_error = |source| HotplugError::Arch {
            device: name.to_owned(),
            source,
        };
        let slot = self
            .arch
            .add_device_to_bridge(id, bridge_type)
            .map_err(arch_error)?;
        if bridge_type == BridgeType::Ccw {
            // The slot is the device number (Kata 1.x's network hotplug took a PCI slot
            // here and hex-encoded its text: see hvarch-s390x).
            return match slot.ccw_devno() {
                Ok(devno) => Ok(Placed {
                    location: Location::Bridge(slot),
                    bus: None,
                    addr: None,
                    path: None,
                    set: false,
                    devno: Some(devno),
                }),
                Err(source) => {
                    let _ = self.arch.remove_device_from_bridge(id);
                    Err(arch_error(source))
                }
            };
        }
        let placed = slot
            .pci_path()
            .map(|path| (path, slot_addr(slot.slot)))
            .map_err(|source| HotplugError::Arch {
                device: name.to_owned(),
                source,
            })
            .and_then(|placed| match placed {
                (path, Some(addr)) => Ok(Placed {
                    location: Location::Bridge(slot.clone()),
                    bus: Some(slot.bridge_id.clone()),
                    addr: Some(addr),
                    path: Some(path),
                    set: true,
                    devno: None,
                }),
                (_, None) => Err(HotplugError::Placement {
                    device: name.to_owned(),
                    reason: format!("bridge slot {} is not a PCI slot", slot.slot),
                }),
            });
        if placed.is_err() {
            let _ = self.arch.remove_device_from_bridge(id);
        }
        placed
    }

    fn free_root_port(&self, name: &str) -> HotplugResult<String> {
        self.state
            .free_root_ports()
            .first()
            .map(|p| (*p).to_owned())
            .ok_or_else(|| HotplugError::Placement {
                device: name.to_owned(),
                reason: if self.state.root_ports.is_empty() {
                    "the VM has no PCIe root ports (hypervisor.pcie_root_ports)".into()
                } else {
                    format!(
                        "all {} PCIe root ports are in use",
                        self.state.root_ports.len()
                    )
                },
            })
    }

    /// Root port `port`'s slot on the root bus: known from the configuration, or asked of
    /// QEMU once (`query-pci`) and remembered for every root port.
    async fn root_port_slot(&mut self, port: &str, name: &str) -> HotplugResult<u32> {
        if let Some(slot) = self.state.root_port_slot(port) {
            return Ok(slot);
        }
        let reply = self
            .port
            .execute(commands::query_pci())
            .await
            .map_err(|source| step_error("query-pci", source))?;
        let learned: Vec<(String, u32)> = self
            .state
            .root_ports
            .iter()
            .filter_map(|p| root_bus_slot(&reply, p).map(|slot| (p.clone(), slot)))
            .collect();
        self.state.root_port_slots.extend(learned);
        self.state
            .root_port_slot(port)
            .ok_or_else(|| HotplugError::Placement {
                device: name.to_owned(),
                reason: format!("root port {port} is not on a root bus in query-pci"),
            })
    }

    pub(super) fn free_location(&mut self, location: &Location, id: &str) {
        match location {
            Location::Bridge(_) => {
                if let Err(e) = self.arch.remove_device_from_bridge(id) {
                    tracing::warn!(device = id, error = %e, "freeing the bridge slot failed");
                }
            }
            Location::RootPort { port } => self.state.free_port(port),
            Location::RootBus | Location::AsGiven => {}
        }
    }

    async fn plug_placed(
        &mut self,
        device: &mut Device,
        id: &str,
        name: &str,
        placed: &Placed,
    ) -> Result<Plugged, Failed> {
        let refused = |error| Failed {
            error,
            pending: None,
        };
        if placed.set {
            set_pci_placement(device, placed.bus.clone(), placed.addr).map_err(|reason| {
                refused(HotplugError::Placement {
                    device: name.to_owned(),
                    reason,
                })
            })?;
        }
        if let Some(devno) = &placed.devno {
            let virtio = device.virtio_mut().ok_or_else(|| {
                refused(HotplugError::Placement {
                    device: name.to_owned(),
                    reason: "a CCW bridge slot needs a virtio device".into(),
                })
            })?;
            virtio.devno = Some(devno.clone());
        }
        let device_error = |source| {
            refused(HotplugError::Device {
                device: name.to_owned(),
                source,
            })
        };
        let parts: Vec<Part> = device.parts().map_err(device_error)?;
        // Render every command first: nothing is sent for a device that cannot render.
        let mut fds = QmpFdNames::new(format!("{id}-fd"));
        let mut calls = Vec::with_capacity(parts.len());
        for part in &parts {
            let before = fds.pending().len();
            let call = part.qmp_add(&mut fds).map_err(device_error)?;
            calls.push((part, call, before..fds.pending().len()));
        }

        let mut sent_fds: Vec<String> = Vec::new();
        let mut consumed = 0usize;
        let mut created: Vec<QmpCall> = Vec::new();
        for (fd_name, fd) in fds.pending() {
            if let Err(source) = self.port.getfd(fd_name.clone(), fd.clone()).await {
                let step = format!("getfd {fd_name}");
                return Err(self.fail(id, created, &sent_fds, step, source).await);
            }
            sent_fds.push(fd_name.clone());
        }
        for (part, call, names) in &calls {
            if let Err(source) = self.port.execute(command(call)).await {
                // A step that timed out (or whose reply was lost) may still take effect in
                // QEMU: undo it too (undoing what does not exist only logs a warning). Its
                // descriptors are closed too: if QEMU took them, closefd only fails.
                if matches!(
                    source,
                    hvarch_qmp::Error::Timeout { .. } | hvarch_qmp::Error::Disconnected
                ) {
                    created.extend(part.qmp_del());
                }
                let unconsumed = sent_fds.get(consumed..).unwrap_or_default();
                return Err(self
                    .fail(id, created, unconsumed, step_name(call), source)
                    .await);
            }
            consumed = consumed.max(names.end);
            created.extend(part.qmp_del());
        }
        let unconsumed = sent_fds.get(consumed..).unwrap_or_default();
        let mut path = placed.path.clone();
        if placed.location == Location::RootBus {
            match self.port.execute(commands::query_pci()).await {
                Ok(reply) => match root_bus_slot(&reply, id) {
                    Some(slot) => {
                        path = PciPath::new(&[slot]).ok();
                        // Keep the slot QEMU chose: a restore cold-plugs the device there.
                        if let Some(addr) = slot_addr(slot) {
                            let _ = set_pci_placement(device, None, Some(addr));
                        }
                    }
                    None => tracing::warn!(device = id, "not found on a root bus in query-pci"),
                },
                Err(source) => {
                    let step = "query-pci".to_owned();
                    return Err(self.fail(id, created, unconsumed, step, source).await);
                }
            }
        }
        // Any descriptor no part consumed (none, normally) is released in QEMU.
        self.close_fds(unconsumed).await;
        Ok(Plugged {
            id: id.to_owned(),
            kind: device.kind(),
            location: placed.location.clone(),
            pci_path: path,
            removal: created,
            virtio_mem: is_virtio_mem(device),
            device: device.clone(),
        })
    }

    /// Rolls back after `step` failed with `source`.
    async fn fail(
        &mut self,
        id: &str,
        created: Vec<QmpCall>,
        unconsumed: &[String],
        step: String,
        source: hvarch_qmp::Error,
    ) -> Failed {
        tracing::warn!(device = id, step = %step, error = %source, "hotplug failed; rolling back");
        let pending = self.rollback(created, unconsumed).await;
        Failed {
            error: step_error(step, source),
            pending,
        }
    }

    /// Undoes `created` in reverse, then releases `fds` in QEMU. Errors are logged. A
    /// `device_del` that is not confirmed (other than by "not found") stops the undo: the
    /// removals left (that one and the earlier parts', in creation order) are returned.
    async fn rollback(
        &mut self,
        mut created: Vec<QmpCall>,
        fds: &[String],
    ) -> Option<Vec<QmpCall>> {
        let mut pending = None;
        while let Some(call) = created.pop() {
            let result = if call.command == "device_del" {
                let id = call.arguments["id"].as_str().unwrap_or_default();
                let event = EventFilter::device_deleted(id);
                self.port
                    .execute_and_wait_event(command(&call), event, self.rollback_timeout)
                    .await
                    .map(drop)
            } else {
                self.port.execute(command(&call)).await.map(drop)
            };
            match result {
                Ok(()) => {}
                Err(e) if call.command == "device_del" && !gone(&e) => {
                    tracing::warn!(step = %step_name(&call), error = %e, "rollback not confirmed");
                    created.push(call);
                    pending = Some(created);
                    break;
                }
                Err(e) => {
                    tracing::warn!(step = %step_name(&call), error = %e, "rollback step failed")
                }
            }
        }
        self.close_fds(fds).await;
        pending
    }

    async fn close_fds(&mut self, names: &[String]) {
        for name in names {
            let closefd = Command::new("closefd", json!({ "fdname": name }));
            if let Err(e) = self.port.execute(closefd).await {
                tracing::warn!(fd = %name, error = %e, "closefd failed");
            }
        }
    }

    /// Unplugs device `id` (plugged, or with a pending removal): see
    /// [`Hotplugger::unplug`](super::Hotplugger::unplug).
    pub(super) async fn unplug(&mut self, id: &str, timeout: Duration) -> HotplugResult<()> {
        let pending = self.state.pending_removals.contains_key(id);
        let device = self
            .state
            .plugged
            .get(id)
            .or_else(|| self.state.pending_removals.get(id))
            .cloned()
            .ok_or_else(|| HotplugError::NotPlugged { id: id.to_owned() })?;
        if device.virtio_mem && !pending {
            let call = commands::qom_set(&format!("/machine/peripheral/{id}"), "requested-size", 0);
            self.port
                .execute(call)
                .await
                .map_err(|source| step_error(format!("qom-set {id} requested-size 0"), source))?;
        }
        for call in device.removal.iter().rev() {
            if call.command != "device_del" {
                continue;
            }
            let dev = call.arguments["id"].as_str().unwrap_or_default();
            let event = EventFilter::device_deleted(dev);
            match self
                .port
                .execute_and_wait_event(command(call), event, timeout)
                .await
            {
                Ok(_) => {}
                Err(e) if gone(&e) => tracing::debug!(device = dev, "already gone"),
                Err(e) => {
                    if unconfirmed(&e) {
                        self.state.insert_pending(device.clone());
                        // The event may have come just after the wait ended.
                        self.settle().await;
                        if !self.state.knows(id) {
                            return Ok(());
                        }
                    }
                    return Err(step_error(format!("device_del {dev}"), e));
                }
            }
        }
        self.complete(id, |_| true).await
    }

    /// Completes the removal of device `id`, which QEMU no longer has: runs its backends'
    /// removals that `wanted` keeps and frees its place. A removal QEMU refuses (a block node
    /// still in use while QEMU finalizes the device) keeps the device a pending removal
    /// holding what is left, and the first such error is returned.
    async fn complete(&mut self, id: &str, wanted: impl Fn(&QmpCall) -> bool) -> HotplugResult<()> {
        let Some(mut device) = self.state.take(id) else {
            return Ok(());
        };
        let mut first_error = None;
        let mut left = Vec::new();
        for call in device.backend_removals().filter(|c| wanted(c)) {
            if let Err(source) = self.port.execute(command(call)).await {
                tracing::warn!(step = %step_name(call), error = %source, "backend removal failed");
                first_error.get_or_insert(step_error(step_name(call), source));
                left.push(call.clone());
            }
        }
        let Some(error) = first_error else {
            self.free_location(&device.location, id);
            return Ok(());
        };
        // What is left, in creation order; no device_del: QEMU no longer has the device.
        left.reverse();
        device.removal = left;
        self.state.insert_pending(device);
        Err(error)
    }

    /// Compares the state with QEMU (`qom-list /machine/peripheral`, and
    /// `query-named-block-nodes` when block nodes are to be removed) and completes the removal
    /// of every device QEMU no longer has. Returns their ids.
    pub(super) async fn reconcile(&mut self) -> HotplugResult<Vec<String>> {
        if self.state.plugged.is_empty() && self.state.pending_removals.is_empty() {
            return Ok(Vec::new());
        }
        let path = "/machine/peripheral";
        let listed = self
            .port
            .execute(commands::qom_list(path))
            .await
            .map_err(|source| step_error(format!("qom-list {path}"), source))?;
        let present: BTreeSet<&str> = listed
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| {
                p.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.starts_with("child<"))
            })
            .filter_map(|p| p.get("name").and_then(Value::as_str))
            .collect();
        let gone: Vec<String> = self
            .state
            .pending_removals
            .keys()
            .chain(self.state.plugged.keys())
            .filter(|id| !present.contains(id.as_str()))
            .cloned()
            .collect();
        let blockdev_del = |c: &QmpCall| c.command == "blockdev-del";
        let has_nodes = gone.iter().any(|id| {
            let known = self.state.plugged.get(id);
            let device = known.or_else(|| self.state.pending_removals.get(id));
            device.is_some_and(|d| d.removal.iter().any(blockdev_del))
        });
        let nodes: BTreeSet<String> = if has_nodes {
            let query = Command::new("query-named-block-nodes", json!({"flat": true}));
            let reply = self
                .port
                .execute(query)
                .await
                .map_err(|source| step_error("query-named-block-nodes", source))?;
            reply
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n.get("node-name").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        } else {
            BTreeSet::new()
        };
        let mut first_error = None;
        for id in &gone {
            tracing::info!(device = %id, "QEMU no longer has the device; completing its removal");
            let exists = |c: &QmpCall| {
                !blockdev_del(c)
                    || c.arguments["node-name"]
                        .as_str()
                        .is_some_and(|n| nodes.contains(n))
            };
            if let Err(e) = self.complete(id, exists).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(gone), Err)
    }
}

fn is_virtio_mem(device: &Device) -> bool {
    matches!(
        device,
        Device::MemoryDevice(MemoryDevice {
            kind: MemoryDeviceKind::VirtioMem { .. },
            ..
        })
    )
}

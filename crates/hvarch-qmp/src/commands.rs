//! The govmm command set (kata-go.md §3.4) plus probing commands, as [`Command`] values with
//! exact JSON arguments.
//!
//! Each helper documents the JSON it produces; unit tests assert it byte for byte. hvarch emits
//! modern QEMU syntax only (QEMU ≥ 7.2): `blockdev-add` is flat with `node-name`, `object-add`
//! properties are flattened (no `props`, removed in QEMU 6.0), `blockdev-del` takes `node-name`,
//! and `share-rw` is always allowed. Typed alternatives: any qapi-qmp command struct can be
//! executed with `execute::<C>()` or turned into a `Command` with [`Command::from_typed`].
//!
//! Typed values: QEMU's JSON `device_add` is strictly typed since 6.2, so where govmm sent strings
//! for booleans or numbers (`"share-rw":"on"`, `"mq":"on"`, `"num-queues":"4"`, string CPU ids and
//! `guest-cid`) these helpers send JSON booleans and integers, which QEMU 10 requires.
//!
//! Optional string arguments are `Option<&str>` (omitted when `None`) where govmm omits empty
//! strings; `romfile` is `Option<&str>` so that `Some("")` reproduces govmm's empty `romfile`.

use serde_json::{json, Map, Value};

use crate::error::Error;
use crate::message::Command;

fn cmd(name: &str, args: Map<String, Value>) -> Command {
    Command::new(name, Value::Object(args))
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn put_some(m: &mut Map<String, Value>, key: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(key.into(), v.into());
    }
}

fn put_nonempty(m: &mut Map<String, Value>, key: &str, v: &str) {
    if !v.is_empty() {
        m.insert(key.into(), v.into());
    }
}

/// `qmp_capabilities` (no arguments). Clients send it themselves during negotiation.
pub fn qmp_capabilities() -> Command {
    Command::bare("qmp_capabilities")
}
/// `stop`: pause the guest.
pub fn stop() -> Command {
    Command::bare("stop")
}
/// `cont`: resume the guest.
pub fn cont() -> Command {
    Command::bare("cont")
}
/// `system_powerdown` (the clients' `system_powerdown()` also waits for `POWERDOWN`).
pub fn system_powerdown() -> Command {
    Command::bare("system_powerdown")
}
/// `system_reset`.
pub fn system_reset() -> Command {
    Command::bare("system_reset")
}
/// `quit`: QEMU exits after replying.
pub fn quit() -> Command {
    Command::bare("quit")
}
/// `query-status` → `StatusInfo`.
pub fn query_status() -> Command {
    Command::bare("query-status")
}
/// `query-version` → `VersionInfo`.
pub fn query_version() -> Command {
    Command::bare("query-version")
}
/// `query-pci`.
pub fn query_pci() -> Command {
    Command::bare("query-pci")
}
/// `query-block`.
pub fn query_block() -> Command {
    Command::bare("query-block")
}
/// `query-named-block-nodes`.
pub fn query_named_block_nodes() -> Command {
    Command::bare("query-named-block-nodes")
}
/// `query-commands` (probing).
pub fn query_commands() -> Command {
    Command::bare("query-commands")
}
/// `query-qmp-schema` (probing; the reply is large, hence the 16 MiB default message limit).
pub fn query_qmp_schema() -> Command {
    Command::bare("query-qmp-schema")
}
/// `query-hotpluggable-cpus`.
pub fn query_hotpluggable_cpus() -> Command {
    Command::bare("query-hotpluggable-cpus")
}
/// `query-memory-devices`.
pub fn query_memory_devices() -> Command {
    Command::bare("query-memory-devices")
}
/// `query-cpus` (removed in QEMU 6.0; QEMU ≥ 6.0 answers `CommandNotFound`; use
/// [`query_cpus_fast`]).
pub fn query_cpus() -> Command {
    Command::bare("query-cpus")
}
/// `query-cpus-fast`.
pub fn query_cpus_fast() -> Command {
    Command::bare("query-cpus-fast")
}
/// `query-migrate`.
pub fn query_migrate() -> Command {
    Command::bare("query-migrate")
}

/// `qom-list {"path"}`.
pub fn qom_list(path: &str) -> Command {
    cmd("qom-list", obj(json!({"path": path})))
}
/// `qom-get {"path","property"}` → raw JSON value.
pub fn qom_get(path: &str, property: &str) -> Command {
    cmd("qom-get", obj(json!({"path": path, "property": property})))
}
/// `qom-set {"path","property","value"}`. govmm takes a `u64`; any JSON value is accepted here.
pub fn qom_set(path: &str, property: &str, value: impl Into<Value>) -> Command {
    cmd(
        "qom-set",
        obj(json!({"path": path, "property": property, "value": value.into()})),
    )
}

/// `blockdev-add {"driver":"raw","read-only":ro,"file":{"driver":"file","filename":device},"node-name":id}`.
pub fn blockdev_add(device: &str, node_name: &str, read_only: bool) -> Command {
    blockdev_add_with_driver("file", device, node_name, read_only)
}

/// Like [`blockdev_add`] with a chosen file driver (govmm HEAD uses `host_device` for block
/// devices, since QEMU 6.0 refuses `file` for them).
pub fn blockdev_add_with_driver(
    file_driver: &str,
    device: &str,
    node_name: &str,
    read_only: bool,
) -> Command {
    cmd(
        "blockdev-add",
        obj(json!({
            "driver": "raw",
            "read-only": read_only,
            "file": {"driver": file_driver, "filename": device},
            "node-name": node_name,
        })),
    )
}

/// [`blockdev_add`] plus `"cache":{"direct":direct,"no-flush":no_flush}`.
pub fn blockdev_add_with_cache(
    device: &str,
    node_name: &str,
    direct: bool,
    no_flush: bool,
    read_only: bool,
) -> Command {
    blockdev_add_with_driver_cache("file", device, node_name, direct, no_flush, read_only)
}

/// [`blockdev_add_with_driver`] plus `"cache":{"direct":direct,"no-flush":no_flush}`.
pub fn blockdev_add_with_driver_cache(
    file_driver: &str,
    device: &str,
    node_name: &str,
    direct: bool,
    no_flush: bool,
    read_only: bool,
) -> Command {
    let mut c = blockdev_add_with_driver(file_driver, device, node_name, read_only);
    c.arguments["cache"] = json!({"direct": direct, "no-flush": no_flush});
    c
}

/// `blockdev-del {"node-name"}`.
pub fn blockdev_del(node_name: &str) -> Command {
    cmd("blockdev-del", obj(json!({"node-name": node_name})))
}

/// `device_del {"id"}` (the clients' `device_del()` also waits for `DEVICE_DELETED`).
pub fn device_del(id: &str) -> Command {
    cmd("device_del", obj(json!({"id": id})))
}

/// `object-del {"id"}`.
pub fn object_del(id: &str) -> Command {
    cmd("object-del", obj(json!({"id": id})))
}

/// `object-add {"qom-type","id", ...props}` with properties flattened (QEMU ≥ 6.0).
/// `props` must be a JSON object (or null).
pub fn object_add(qom_type: &str, id: &str, props: Value) -> Result<Command, Error> {
    let mut m = obj(json!({"qom-type": qom_type, "id": id}));
    match props {
        Value::Null => {}
        Value::Object(p) => m.extend(p),
        other => {
            return Err(Error::InvalidArguments {
                command: "object-add".into(),
                reason: format!("props must be a JSON object, got {other}"),
            })
        }
    }
    Ok(cmd("object-add", m))
}

/// `chardev-remove {"id"}`.
pub fn chardev_remove(id: &str) -> Command {
    cmd("chardev-remove", obj(json!({"id": id})))
}

/// `chardev-add` of a Unix socket backend:
/// `{"id","backend":{"type":"socket","data":{"wait"?,"server","addr":{"type":"unix","data":{"path"}}}}}`.
/// `wait` is sent only for a server (govmm HEAD; QEMU rejects it in client mode).
pub fn chardev_add_unix_socket(id: &str, path: &str, wait: bool, server: bool) -> Command {
    let mut data = obj(json!({"server": server, "addr": {"type": "unix", "data": {"path": path}}}));
    if server {
        data.insert("wait".into(), wait.into());
    }
    cmd(
        "chardev-add",
        obj(json!({"id": id, "backend": {"type": "socket", "data": data}})),
    )
}

/// `netdev_add {"type","id","ifname","downscript","script"}` plus `"queues"` (int) when > 1.
pub fn netdev_add(
    netdev_type: &str,
    id: &str,
    ifname: &str,
    downscript: &str,
    script: &str,
    queues: u32,
) -> Command {
    let mut m = obj(json!({
        "type": netdev_type, "id": id, "ifname": ifname, "downscript": downscript, "script": script,
    }));
    if queues > 1 {
        m.insert("queues".into(), queues.into());
    }
    cmd("netdev_add", m)
}

/// `netdev_add {"type","id","chardev"}` (vhost-user) plus `"queues"` when > 1.
pub fn netdev_add_chardev(netdev_type: &str, id: &str, chardev: &str, queues: u32) -> Command {
    let mut m = obj(json!({"type": netdev_type, "id": id, "chardev": chardev}));
    if queues > 1 {
        m.insert("queues".into(), queues.into());
    }
    cmd("netdev_add", m)
}

/// `netdev_add {"type","id","fds":"n1:n2"}` plus `"vhost":true,"vhostfds":"v1:v2"` when any vhost
/// fd names are given. The fds must have been passed with `getfd` first.
pub fn netdev_add_by_fds(
    netdev_type: &str,
    id: &str,
    fd_names: &[&str],
    vhost_fd_names: &[&str],
) -> Command {
    let mut m = obj(json!({"type": netdev_type, "id": id, "fds": fd_names.join(":")}));
    if !vhost_fd_names.is_empty() {
        m.insert("vhost".into(), true.into());
        m.insert("vhostfds".into(), vhost_fd_names.join(":").into());
    }
    cmd("netdev_add", m)
}

/// `netdev_del {"id"}`.
pub fn netdev_del(id: &str) -> Command {
    cmd("netdev_del", obj(json!({"id": id})))
}

/// Arguments of govmm's `ExecuteDeviceAdd` (a block device on a `-blockdev` node).
#[derive(Debug, Clone, Default)]
pub struct BlockDeviceAdd<'a> {
    /// The block node (`drive`).
    pub blockdev_id: &'a str,
    /// The device id.
    pub dev_id: &'a str,
    /// The device driver, e.g. `virtio-blk-pci`.
    pub driver: &'a str,
    /// The bus (or the CCW `devno` when `ccw`); omitted when empty.
    pub bus: &'a str,
    /// `romfile` (PCI drivers only); omitted when `None`.
    pub romfile: Option<&'a str>,
    /// Adds `"share-rw":true`.
    pub shared: bool,
    /// Adds `"disable-modern":true`.
    pub disable_modern: bool,
    /// The host is s390x (CCW): the bus goes to `devno`.
    pub ccw: bool,
}

/// `device_add {"id","driver","drive"}` + `"devno"` (CCW) or `"bus"`, `"share-rw":true`,
/// `"romfile"`, `"disable-modern":true` as set.
pub fn device_add_block(a: &BlockDeviceAdd<'_>) -> Command {
    let mut m = obj(json!({"id": a.dev_id, "driver": a.driver, "drive": a.blockdev_id}));
    if a.ccw {
        put_nonempty(&mut m, "devno", a.bus);
    } else {
        put_nonempty(&mut m, "bus", a.bus);
    }
    if a.shared {
        m.insert("share-rw".into(), true.into());
    }
    put_some(&mut m, "romfile", a.romfile);
    if a.disable_modern {
        m.insert("disable-modern".into(), true.into());
    }
    cmd("device_add", m)
}

/// Arguments of govmm's `ExecuteSCSIDeviceAdd`.
#[derive(Debug, Clone, Default)]
pub struct ScsiDeviceAdd<'a> {
    /// The block node (`drive`).
    pub blockdev_id: &'a str,
    /// The device id.
    pub dev_id: &'a str,
    /// `scsi-hd`, `scsi-cd` or `scsi-disk`.
    pub driver: &'a str,
    /// The SCSI bus, e.g. `scsi0.0`.
    pub bus: &'a str,
    /// `scsi-id` (int), omitted when `None`.
    pub scsi_id: Option<u32>,
    /// `lun` (int), omitted when `None`.
    pub lun: Option<u32>,
    /// Adds `"share-rw":true`.
    pub shared: bool,
}

/// `device_add {"id","driver","drive","bus"}` + `"scsi-id"`, `"lun"`, `"share-rw":true`.
/// A driver other than `scsi-hd`/`scsi-cd`/`scsi-disk` is an error.
pub fn device_add_scsi(a: &ScsiDeviceAdd<'_>) -> Result<Command, Error> {
    if !matches!(a.driver, "scsi-hd" | "scsi-cd" | "scsi-disk") {
        return Err(Error::InvalidArguments {
            command: "device_add".into(),
            reason: format!("invalid SCSI driver provided {}", a.driver),
        });
    }
    let mut m =
        obj(json!({"id": a.dev_id, "driver": a.driver, "drive": a.blockdev_id, "bus": a.bus}));
    if let Some(id) = a.scsi_id {
        m.insert("scsi-id".into(), id.into());
    }
    if let Some(lun) = a.lun {
        m.insert("lun".into(), lun.into());
    }
    if a.shared {
        m.insert("share-rw".into(), true.into());
    }
    Ok(cmd("device_add", m))
}

/// Arguments of govmm's `ExecutePCIDeviceAdd` (a block device at a PCI address).
#[derive(Debug, Clone, Default)]
pub struct PciDeviceAdd<'a> {
    /// The block node (`drive`).
    pub blockdev_id: &'a str,
    /// The device id.
    pub dev_id: &'a str,
    /// The driver, e.g. `virtio-blk-pci`.
    pub driver: &'a str,
    /// The PCI address (slot), e.g. `"0x2"`.
    pub addr: &'a str,
    /// The bus; omitted when empty.
    pub bus: &'a str,
    /// `romfile`; omitted when `None`.
    pub romfile: Option<&'a str>,
    /// `"num-queues":q` when > 0.
    pub queues: u32,
    /// Adds `"share-rw":true`.
    pub shared: bool,
    /// Adds `"disable-modern":true`.
    pub disable_modern: bool,
}

/// `device_add {"id","driver","drive","addr"}` + `"bus"`, `"share-rw":true`, `"num-queues"`,
/// `"romfile"`, `"disable-modern":true` as set.
pub fn device_add_pci(a: &PciDeviceAdd<'_>) -> Command {
    let mut m =
        obj(json!({"id": a.dev_id, "driver": a.driver, "drive": a.blockdev_id, "addr": a.addr}));
    put_nonempty(&mut m, "bus", a.bus);
    if a.shared {
        m.insert("share-rw".into(), true.into());
    }
    if a.queues > 0 {
        m.insert("num-queues".into(), a.queues.into());
    }
    put_some(&mut m, "romfile", a.romfile);
    if a.disable_modern {
        m.insert("disable-modern".into(), true.into());
    }
    cmd("device_add", m)
}

/// Arguments of govmm's `ExecuteNetPCIDeviceAdd` (`virtio-net-pci`).
#[derive(Debug, Clone, Default)]
pub struct NetPciDeviceAdd<'a> {
    /// The netdev; omitted when empty.
    pub netdev_id: &'a str,
    /// The device id.
    pub dev_id: &'a str,
    /// The MAC address; omitted when empty.
    pub mac: &'a str,
    /// The PCI address; omitted when empty.
    pub addr: &'a str,
    /// The bus; omitted when empty.
    pub bus: &'a str,
    /// `romfile`; omitted when `None` (govmm always sent it, often empty).
    pub romfile: Option<&'a str>,
    /// With queues > 0: `"mq":true,"vectors":2*queues+2`.
    pub queues: u32,
    /// Adds `"disable-modern":true`.
    pub disable_modern: bool,
}

/// `device_add {"id","driver":"virtio-net-pci"}` + `"romfile"`, `"bus"`, `"addr"`, `"mac"`,
/// `"netdev"`, `"disable-modern"`, `"mq":true`, `"vectors"` as set.
pub fn device_add_net_pci(a: &NetPciDeviceAdd<'_>) -> Command {
    let mut m = obj(json!({"id": a.dev_id, "driver": "virtio-net-pci"}));
    put_some(&mut m, "romfile", a.romfile);
    put_nonempty(&mut m, "bus", a.bus);
    put_nonempty(&mut m, "addr", a.addr);
    put_nonempty(&mut m, "mac", a.mac);
    put_nonempty(&mut m, "netdev", a.netdev_id);
    if a.disable_modern {
        m.insert("disable-modern".into(), true.into());
    }
    if a.queues > 0 {
        m.insert("mq".into(), true.into());
        m.insert("vectors".into(), (2 * u64::from(a.queues) + 2).into());
    }
    cmd("device_add", m)
}

/// `device_add {"id","driver":"virtio-net-ccw","netdev","mac","devno":bus}` + `"mq":true` when
/// queues > 0.
pub fn device_add_net_ccw(
    netdev_id: &str,
    dev_id: &str,
    mac: &str,
    bus: &str,
    queues: u32,
) -> Command {
    let mut m = obj(
        json!({"id": dev_id, "driver": "virtio-net-ccw", "netdev": netdev_id, "mac": mac, "devno": bus}),
    );
    if queues > 0 {
        m.insert("mq".into(), true.into());
    }
    cmd("device_add", m)
}

/// `device_add {"driver","id","chardev","addr"}` + `"bus"` (vhost-user PCI devices).
pub fn device_add_pci_vhost_user(
    driver: &str,
    dev_id: &str,
    chardev_id: &str,
    addr: &str,
    bus: &str,
) -> Command {
    let mut m = obj(json!({"driver": driver, "id": dev_id, "chardev": chardev_id, "addr": addr}));
    put_nonempty(&mut m, "bus", bus);
    cmd("device_add", m)
}

/// `device_add {"id","driver":"vfio-pci"|"vfio-ccw","host":bdf,"romfile"}` + `"bus"`
/// (`ccw` selects `vfio-ccw`, as govmm does on s390x).
pub fn device_add_vfio(dev_id: &str, bdf: &str, bus: &str, romfile: &str, ccw: bool) -> Command {
    let driver = if ccw { "vfio-ccw" } else { "vfio-pci" };
    let mut m = obj(json!({"id": dev_id, "driver": driver, "host": bdf, "romfile": romfile}));
    put_nonempty(&mut m, "bus", bus);
    cmd("device_add", m)
}

/// `device_add {"id","driver":"vfio-pci","host","addr","romfile"}` + `"bus"`.
pub fn device_add_pci_vfio(
    dev_id: &str,
    bdf: &str,
    addr: &str,
    bus: &str,
    romfile: &str,
) -> Command {
    let mut m = obj(
        json!({"id": dev_id, "driver": "vfio-pci", "host": bdf, "addr": addr, "romfile": romfile}),
    );
    put_nonempty(&mut m, "bus", bus);
    cmd("device_add", m)
}

/// `device_add {"id","driver":"vfio-pci","sysfsdev","romfile"}` + `"bus"`, `"addr"` when non-empty.
pub fn device_add_pci_vfio_mediated(
    dev_id: &str,
    sysfsdev: &str,
    addr: &str,
    bus: &str,
    romfile: &str,
) -> Command {
    let mut m =
        obj(json!({"id": dev_id, "driver": "vfio-pci", "sysfsdev": sysfsdev, "romfile": romfile}));
    put_nonempty(&mut m, "bus", bus);
    put_nonempty(&mut m, "addr", addr);
    cmd("device_add", m)
}

/// `device_add {"driver":"vfio-ap","sysfsdev"}`.
pub fn device_add_ap_vfio_mediated(sysfsdev: &str) -> Command {
    cmd(
        "device_add",
        obj(json!({"driver": "vfio-ap", "sysfsdev": sysfsdev})),
    )
}

/// Arguments of govmm's `ExecuteCPUDeviceAdd`. Topology ids are integers (QEMU's JSON
/// `device_add` is typed; govmm's strings are refused by QEMU ≥ 6.2).
#[derive(Debug, Clone, Default)]
pub struct CpuDeviceAdd<'a> {
    /// The CPU driver, e.g. `host-x86_64-cpu`.
    pub driver: &'a str,
    /// The device id.
    pub cpu_id: &'a str,
    /// `socket-id`; omitted when `None` or for s390x/ppc64 host CPUs.
    pub socket_id: Option<u32>,
    /// `die-id`; sent only for `host-x86_64-cpu`.
    pub die_id: Option<u32>,
    /// `core-id`.
    pub core_id: u32,
    /// `thread-id`; omitted when `None` or for s390x/ppc64 host CPUs.
    pub thread_id: Option<u32>,
}

/// `device_add {"driver","id","core-id"}` + `"socket-id"`, `"thread-id"`, `"die-id"` per govmm's
/// rules.
pub fn device_add_cpu(a: &CpuDeviceAdd<'_>) -> Command {
    let mut m = obj(json!({"driver": a.driver, "id": a.cpu_id, "core-id": a.core_id}));
    if !matches!(a.driver, "host-s390x-cpu" | "host-powerpc64-cpu") {
        if let Some(v) = a.socket_id {
            m.insert("socket-id".into(), v.into());
        }
        if let Some(v) = a.thread_id {
            m.insert("thread-id".into(), v.into());
        }
    }
    if a.driver == "host-x86_64-cpu" {
        if let Some(v) = a.die_id {
            m.insert("die-id".into(), v.into());
        }
    }
    cmd("device_add", m)
}

/// Arguments of govmm's `ExecutePCIVSockAdd` (`vhost-vsock-pci`).
#[derive(Debug, Clone, Default)]
pub struct VsockPciAdd<'a> {
    /// The device id.
    pub id: &'a str,
    /// The guest CID.
    pub guest_cid: u64,
    /// The vhost fd name or number, as a string.
    pub vhostfd: &'a str,
    /// The PCI address.
    pub addr: &'a str,
    /// The bus; omitted when empty.
    pub bus: &'a str,
    /// `romfile`.
    pub romfile: &'a str,
    /// Adds `"disable-modern":true`.
    pub disable_modern: bool,
}

/// `device_add {"driver":"vhost-vsock-pci","id","guest-cid","vhostfd","addr","romfile"}` + `"bus"`,
/// `"disable-modern":true`.
pub fn device_add_pci_vsock(a: &VsockPciAdd<'_>) -> Command {
    let mut m = obj(json!({
        "driver": "vhost-vsock-pci", "id": a.id, "guest-cid": a.guest_cid,
        "vhostfd": a.vhostfd, "addr": a.addr, "romfile": a.romfile,
    }));
    put_nonempty(&mut m, "bus", a.bus);
    if a.disable_modern {
        m.insert("disable-modern".into(), true.into());
    }
    cmd("device_add", m)
}

/// `device_add {"driver":"virtserialport","id","name","chardev"}`.
pub fn device_add_virt_serial_port(id: &str, name: &str, chardev: &str) -> Command {
    cmd(
        "device_add",
        obj(json!({"driver": "virtserialport", "id": id, "name": name, "chardev": chardev})),
    )
}

/// `migrate-set-capabilities {"capabilities":[{"capability":name,"state":bool},...]}`.
pub fn migrate_set_capabilities(capabilities: &[(&str, bool)]) -> Command {
    let caps: Vec<Value> = capabilities
        .iter()
        .map(|(name, state)| json!({"capability": name, "state": state}))
        .collect();
    cmd(
        "migrate-set-capabilities",
        obj(json!({"capabilities": caps})),
    )
}

/// `migrate {"uri"}`.
pub fn migrate(uri: &str) -> Command {
    cmd("migrate", obj(json!({"uri": uri})))
}

/// `migrate-incoming {"uri"}`.
pub fn migrate_incoming(uri: &str) -> Command {
    cmd("migrate-incoming", obj(json!({"uri": uri})))
}

/// `balloon {"value":bytes}`.
pub fn balloon(bytes: u64) -> Command {
    cmd("balloon", obj(json!({"value": bytes})))
}

/// `dump-guest-memory {"protocol","paging","format"}`.
pub fn dump_guest_memory(protocol: &str, paging: bool, format: &str) -> Command {
    cmd(
        "dump-guest-memory",
        obj(json!({"protocol": protocol, "paging": paging, "format": format})),
    )
}

/// `getfd {"fdname"}`. The fd travels with it over SCM_RIGHTS: use the clients' `getfd()`.
pub fn getfd(fdname: &str) -> Command {
    cmd("getfd", obj(json!({"fdname": fdname})))
}

/// `add-fd` with optional `"fdset-id"` and `"opaque"`. The fd travels with it over SCM_RIGHTS:
/// use the clients' `add_fd()`.
pub fn add_fd(fdset_id: Option<u64>, opaque: Option<&str>) -> Command {
    let mut m = Map::new();
    if let Some(id) = fdset_id {
        m.insert("fdset-id".into(), id.into());
    }
    put_some(&mut m, "opaque", opaque);
    cmd("add-fd", m)
}

/// A memory hotplug: an `object-add` of a memory backend, then a `device_add` that uses it, and the
/// `object-del` that undoes the first step if the second fails (govmm's `ExecMemdevAdd`,
/// `ExecHotplugMemory`, `ExecuteNVDIMMDeviceAdd`). Run it with the clients' `hotplug_memory()`.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryHotplug {
    /// The `object-add` of the backend.
    pub object_add: Command,
    /// The `device_add` of the memory device.
    pub device_add: Command,
    /// The `object-del` run when `device_add` fails.
    pub rollback: Command,
}

/// govmm's `ExecMemdevAdd`: `object-add {"qom-type","id","size":MiB<<20,"mem-path"?,"share":true?}`
/// (flattened), then `device_add {"driver","id":driver_id,"memdev":id}`.
pub fn memdev_add(
    qom_type: &str,
    id: &str,
    mem_path: &str,
    size_mib: u64,
    share: bool,
    driver: &str,
    driver_id: &str,
) -> MemoryHotplug {
    let mut m = obj(json!({"qom-type": qom_type, "id": id, "size": size_mib << 20}));
    put_nonempty(&mut m, "mem-path", mem_path);
    if share {
        m.insert("share".into(), true.into());
    }
    MemoryHotplug {
        object_add: cmd("object-add", m),
        device_add: cmd(
            "device_add",
            obj(json!({"driver": driver, "id": driver_id, "memdev": id})),
        ),
        rollback: object_del(id),
    }
}

/// govmm's `ExecHotplugMemory`: [`memdev_add`] with driver `pc-dimm` and device id `"dimm"+id`.
pub fn pc_dimm_add(
    qom_type: &str,
    id: &str,
    mem_path: &str,
    size_mib: u64,
    share: bool,
) -> MemoryHotplug {
    memdev_add(
        qom_type,
        id,
        mem_path,
        size_mib,
        share,
        "pc-dimm",
        &format!("dimm{id}"),
    )
}

/// govmm's `ExecuteNVDIMMDeviceAdd`: `object-add {"qom-type":"memory-backend-file",
/// "id":"nvdimmbackmem"+id,"mem-path","size","share":true,"pmem"?}` then
/// `device_add {"driver":"nvdimm","id":"nvdimm"+id,"memdev":"nvdimmbackmem"+id}`.
pub fn nvdimm_add(id: &str, mem_path: &str, size: u64, pmem: Option<bool>) -> MemoryHotplug {
    let backend = format!("nvdimmbackmem{id}");
    let mut m = obj(json!({
        "qom-type": "memory-backend-file", "id": backend, "mem-path": mem_path, "size": size, "share": true,
    }));
    if let Some(pmem) = pmem {
        m.insert("pmem".into(), pmem.into());
    }
    MemoryHotplug {
        object_add: cmd("object-add", m),
        device_add: cmd(
            "device_add",
            obj(json!({"driver": "nvdimm", "id": format!("nvdimm{id}"), "memdev": backend})),
        ),
        rollback: object_del(&backend),
    }
}

//! Reading QEMU's replies the same way in every test, whichever client asked: the harness's
//! [`crate::RawQmp`] or a VM's own client (`hvarch::Vm` or `hvarch::AsyncVm`).

use crate::drivers::QmpVm;
use serde_json::{json, Value};

/// The names of the `child<…>` entries of a `qom-list` reply (device ids under
/// `/machine/peripheral`), sorted.
pub fn child_names(qom_list: &Value) -> Vec<String> {
    let mut names: Vec<String> = qom_list
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// The `node-name`s of a `query-named-block-nodes` reply.
pub fn node_names(nodes: &Value) -> Vec<String> {
    nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node-name"].as_str().map(str::to_owned))
        .collect()
}

/// Every non-empty `qdev_id` of a `query-pci` reply, bridges walked, sorted.
pub fn pci_ids(buses: &Value) -> Vec<String> {
    fn walk(devices: &Value, out: &mut Vec<String>) {
        for dev in devices.as_array().into_iter().flatten() {
            if let Some(id) = dev["qdev_id"].as_str().filter(|id| !id.is_empty()) {
                out.push(id.to_owned());
            }
            if let Some(bus) = dev.pointer("/pci_bridge/devices") {
                walk(bus, out);
            }
        }
    }
    let mut ids = Vec::new();
    for bus in buses.as_array().into_iter().flatten() {
        walk(&bus["devices"], &mut ids);
    }
    ids.sort();
    ids
}

/// Executes `command` on `vm`'s QMP client; panics with the command's name on error.
pub fn vm_qmp(vm: &impl QmpVm, command: &str, arguments: Value) -> Value {
    vm.execute_raw(command, arguments)
        .unwrap_or_else(|e| panic!("{command}: {e}"))
}

/// The ids of `vm`'s user-created devices (`qom-list /machine/peripheral`), sorted.
pub fn vm_peripherals(vm: &impl QmpVm) -> Vec<String> {
    child_names(&vm_qmp(
        vm,
        "qom-list",
        json!({"path": "/machine/peripheral"}),
    ))
}

/// `vm`'s named block nodes.
pub fn vm_block_nodes(vm: &impl QmpVm) -> Vec<String> {
    node_names(&vm_qmp(vm, "query-named-block-nodes", json!({})))
}

/// `vm`'s PCI device ids (see [`pci_ids`]).
pub fn vm_pci_ids(vm: &impl QmpVm) -> Vec<String> {
    pci_ids(&vm_qmp(vm, "query-pci", json!({})))
}

/// The bus device `id` of `vm` sits on (`qom-get … parent_bus`), e.g.
/// `/machine/peripheral/rp0/rp0`. (`query-pci` cannot show it in a guest that never ran: no
/// firmware or kernel has numbered the root ports' secondary buses.)
pub fn vm_parent_bus(vm: &impl QmpVm, id: &str) -> String {
    vm_qmp(
        vm,
        "qom-get",
        json!({"path": format!("/machine/peripheral/{id}"), "property": "parent_bus"}),
    )
    .as_str()
    .unwrap_or_default()
    .to_owned()
}

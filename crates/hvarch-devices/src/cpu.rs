//! Hot-pluggable vCPUs ([`CpuDevice`]): the `device_add` that brings a vCPU slot reported by
//! `query-hotpluggable-cpus` online.

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Error, Result};
use crate::id::check_id;
use crate::part::Part;
use crate::props::Props;

/// The CPU drivers to which govmm never sent `socket-id` / `thread-id`: their slots are named
/// by `core-id` alone.
const CORE_ID_ONLY_DRIVERS: [&str; 2] = ["host-s390x-cpu", "host-powerpc64-cpu"];

/// A vCPU, `device_add {"driver": "host-x86_64-cpu", "id": …, "socket-id": …, …}`.
///
/// The topology ids are the ones `query-hotpluggable-cpus` reports for a free slot (its
/// `props`); copy them over. They render as integers, as QEMU wants (`core-id=<int32>`); govmm's
/// `ExecuteCPUDeviceAdd` sent them as JSON strings.
///
/// govmm left `socket-id` and `thread-id` out for `host-s390x-cpu` and `host-powerpc64-cpu`,
/// whatever the caller gave; here setting them for those drivers is a validation error instead
/// of a silent drop. `core_id` is required (govmm always sent it).
///
/// ```
/// use hvarch_devices::cpu::CpuDevice;
/// use hvarch_devices::{fd::NoFds, QemuDevice};
/// let mut cpu = CpuDevice::new("max-x86_64-cpu", "cpu-1", 0);
/// cpu.socket_id = Some(1);
/// cpu.thread_id = Some(0);
/// let add = cpu.parts().unwrap()[0].qmp_add(&mut NoFds).unwrap();
/// assert_eq!(add.command, "device_add");
/// assert_eq!(add.arguments, serde_json::json!({
///     "driver": "max-x86_64-cpu", "id": "cpu-1", "socket-id": 1, "core-id": 0, "thread-id": 0,
/// }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CpuDevice {
    /// The CPU driver, the `type` of the slot in `query-hotpluggable-cpus`:
    /// `host-x86_64-cpu`, `max-x86_64-cpu`, `host-s390x-cpu`, … (an identifier containing `cpu`).
    pub driver: String,
    /// The device id (what `device_del` takes).
    pub id: String,
    /// `socket-id=`.
    #[serde(default)]
    pub socket_id: Option<u32>,
    /// `die-id=` (x86).
    #[serde(default)]
    pub die_id: Option<u32>,
    /// `core-id=` (required).
    #[serde(default)]
    pub core_id: Option<u32>,
    /// `thread-id=`.
    #[serde(default)]
    pub thread_id: Option<u32>,
}

impl CpuDevice {
    /// A vCPU `id` of `driver` in core `core_id`.
    pub fn new(driver: impl Into<String>, id: impl Into<String>, core_id: u32) -> Self {
        CpuDevice {
            driver: driver.into(),
            id: id.into(),
            socket_id: None,
            die_id: None,
            core_id: Some(core_id),
            thread_id: None,
        }
    }
}

/// QEMU's topology ids are `int32`; `-1` means "unset".
fn check_topology_id(what: &'static str, field: &'static str, value: Option<u32>) -> Result<()> {
    match value {
        Some(v) if i32::try_from(v).is_err() => Err(invalid(
            what,
            field,
            v,
            "QEMU topology ids are at most 2147483647",
        )),
        _ => Ok(()),
    }
}

impl QemuDevice for CpuDevice {
    fn kind(&self) -> &'static str {
        "cpu"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "driver", &self.driver)?;
        if !self.driver.contains("cpu") {
            return Err(invalid(
                what,
                "driver",
                &self.driver,
                "not a CPU driver (QEMU's CPU drivers are named like host-x86_64-cpu)",
            ));
        }
        check_id(what, "id", &self.id)?;
        if self.core_id.is_none() {
            return Err(Error::MissingField {
                what,
                field: "core_id",
            });
        }
        if CORE_ID_ONLY_DRIVERS.contains(&self.driver.as_str()) {
            let reason = "this driver's slots are named by core_id only";
            if let Some(v) = self.socket_id {
                return Err(invalid(what, "socket_id", v, reason));
            }
            if let Some(v) = self.thread_id {
                return Err(invalid(what, "thread_id", v, reason));
            }
        }
        check_topology_id(what, "socket_id", self.socket_id)?;
        check_topology_id(what, "die_id", self.die_id)?;
        check_topology_id(what, "core_id", self.core_id)?;
        check_topology_id(what, "thread_id", self.thread_id)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::device(
            &self.driver,
            Props::new()
                .with("id", self.id.as_str())
                .opt("socket-id", self.socket_id)
                .opt("die-id", self.die_id)
                .opt("core-id", self.core_id)
                .opt("thread-id", self.thread_id),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{bad_id, id, Cases};
    use proptest::prelude::*;
    use serde_json::json;

    fn qmp(cpu: &CpuDevice) -> serde_json::Value {
        let add = cpu.parts().unwrap()[0].qmp_add(&mut NoFds).unwrap();
        assert_eq!(add.command, "device_add");
        add.arguments
    }

    /// govmm `ExecuteCPUDeviceAdd(ctx, "host-x86_64-cpu", "cpu-0", "0", "0", "0", "0", "")`
    /// sent `{"driver","id","core-id":"0","socket-id":"0","die-id":"0","thread-id":"0"}`;
    /// difference: the ids are JSON integers, as QEMU's `int32` properties want.
    #[test]
    fn govmm_execute_cpu_device_add() {
        let cpu = CpuDevice {
            socket_id: Some(0),
            die_id: Some(0),
            thread_id: Some(0),
            ..CpuDevice::new("host-x86_64-cpu", "cpu-0", 0)
        };
        assert_eq!(
            qmp(&cpu),
            json!({"driver": "host-x86_64-cpu", "id": "cpu-0", "core-id": 0,
                   "socket-id": 0, "die-id": 0, "thread-id": 0})
        );
    }

    /// govmm: no socket-id/thread-id for host-s390x-cpu (and host-powerpc64-cpu); identical
    /// output, but giving them is an error here rather than silently dropped.
    #[test]
    fn s390x_and_powerpc64_take_core_id_only() {
        let cpu = CpuDevice::new("host-s390x-cpu", "cpu-1", 1);
        assert_eq!(
            qmp(&cpu),
            json!({"driver": "host-s390x-cpu", "id": "cpu-1", "core-id": 1})
        );
        let bad = CpuDevice {
            socket_id: Some(0),
            ..CpuDevice::new("host-powerpc64-cpu", "cpu-1", 1)
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`socket_id`"));
        let bad = CpuDevice {
            thread_id: Some(0),
            ..CpuDevice::new("host-s390x-cpu", "cpu-1", 1)
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`thread_id`"));
    }

    #[test]
    fn option_and_json_syntax() {
        let cpu = CpuDevice {
            socket_id: Some(1),
            thread_id: Some(1),
            ..CpuDevice::new("max-x86_64-cpu", "vcpu3", 0)
        };
        let part = &cpu.parts().unwrap()[0];
        assert_eq!(
            part.to_args(Syntax::Options, &mut NoFds).unwrap(),
            [
                "-device",
                "max-x86_64-cpu,id=vcpu3,socket-id=1,core-id=0,thread-id=1"
            ]
        );
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"max-x86_64-cpu","id":"vcpu3","socket-id":1,"core-id":0,"thread-id":1}"#
        );
        assert_eq!(part.qmp_del().unwrap().arguments, json!({"id": "vcpu3"}));
    }

    #[test]
    fn errors_name_the_field() {
        let mut cpu = CpuDevice::new("virtio-blk-pci", "c", 0);
        assert!(cpu.validate().unwrap_err().to_string().contains("`driver`"));
        cpu.driver = "max,x=1-cpu".into();
        assert!(cpu.validate().unwrap_err().to_string().contains("driver"));
        cpu.driver = "max-x86_64-cpu".into();
        cpu.core_id = None;
        assert_eq!(
            cpu.parts().unwrap_err().to_string(),
            "cpu: `core_id` is required"
        );
        cpu.core_id = Some(u32::MAX);
        assert!(cpu
            .validate()
            .unwrap_err()
            .to_string()
            .contains("`core_id`"));
        cpu.core_id = Some(0);
        cpu.id = String::new();
        assert_eq!(
            cpu.validate().unwrap_err().to_string(),
            "cpu: `id` is required"
        );
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = "driver = \"host-x86_64-cpu\"\nid = \"cpu-2\"\nsocket_id = 2\ncore_id = 0\n\
                    thread_id = 0";
        let cpu: CpuDevice = toml::from_str(text).unwrap();
        assert_eq!(cpu.socket_id, Some(2));
        let again: CpuDevice = toml::from_str(&toml::to_string(&cpu).unwrap()).unwrap();
        assert_eq!(again, cpu);
        assert!(toml::from_str::<CpuDevice>(&format!("{text}\nnode_id = 0")).is_err());
    }

    fn topology_id() -> impl Strategy<Value = u32> {
        prop_oneof![0u32..8, 0..=i32::MAX as u32]
    }

    /// Valid CPUs: a generic `<arch>-cpu` driver with any topology, or a driver whose slots
    /// are named by core id only.
    fn cpu() -> impl Strategy<Value = CpuDevice> {
        let generic = (
            "[a-z][a-z0-9_]{0,8}(-[a-z0-9_]{1,6})?-cpu",
            proptest::option::of(topology_id()),
            proptest::option::of(topology_id()),
        );
        let driver = prop_oneof![
            3 => generic,
            1 => prop::sample::select(CORE_ID_ONLY_DRIVERS.to_vec())
                .prop_map(|d| (d.to_owned(), None, None)),
        ];
        (
            driver,
            id(),
            proptest::option::of(topology_id()),
            topology_id(),
        )
            .prop_map(
                |((driver, socket_id, thread_id), id, die_id, core_id)| CpuDevice {
                    driver,
                    id,
                    socket_id,
                    die_id,
                    core_id: Some(core_id),
                    thread_id,
                },
            )
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let too_big = i32::MAX as u32 + 1..;
        Cases::new(cpu())
            .fault("driver", bad_id(), |c, v| c.driver = v)
            .fault("driver", "[a-z][a-z0-9_-]{0,8}", |c, v| {
                c.driver = format!("{v}-device").replace("cpu", "")
            })
            .fault("id", bad_id(), |c, v| c.id = v)
            .fault("core_id", Just(()), |c, ()| c.core_id = None)
            .fault("core_id", too_big.clone(), |c, v| c.core_id = Some(v))
            .fault("die_id", too_big.clone(), |c, v| c.die_id = Some(v))
            .fault("socket_id", too_big.clone(), |c, v| {
                c.driver = "host-x86_64-cpu".into();
                c.socket_id = Some(v);
            })
            .fault("thread_id", too_big, |c, v| {
                c.driver = "host-x86_64-cpu".into();
                c.thread_id = Some(v);
            })
            .fault("socket_id", topology_id(), |c, v| {
                c.driver = "host-s390x-cpu".into();
                c.socket_id = Some(v);
            })
            .check();
    }
}

//! The paravirtual panic device ([`PvPanic`]): lets a guest kernel tell QEMU it panicked, so
//! the manager sees a `GUEST_PANICKED` event instead of a silent hang.

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Result};
use crate::id::check_opt_id;
use crate::part::Part;
use crate::pci::PciAddr;
use crate::props::Props;

/// The bus a [`PvPanic`] sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PvPanicKind {
    /// `pvpanic`, an ISA I/O port device: x86 `pc` and `q35`. Cold plug only.
    Isa,
    /// `pvpanic-pci`: arm64 `virt` and any machine with PCI. Hot-pluggable.
    Pci,
}

/// A pvpanic device, `-device pvpanic` (ISA) or `-device pvpanic-pci`.
///
/// govmm's `PVPanicDevice{NoShutdown}` also emitted `-no-shutdown`; that is a property of the VM
/// (keep QEMU alive after the guest stops so the manager can read its state), not of this
/// device, and belongs to the VM configuration.
///
/// ```
/// use hvarch_devices::pvpanic::PvPanic;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let args = |d: &PvPanic| d.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap();
/// assert_eq!(args(&PvPanic::isa()), ["-device", "pvpanic"]);
/// let mut pci = PvPanic::pci();
/// pci.id = Some("panic0".into());
/// pci.events = Some(PvPanic::PANICKED | PvPanic::SHUTDOWN);
/// assert_eq!(args(&pci), ["-device", "pvpanic-pci,id=panic0,events=5"]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PvPanic {
    /// ISA or PCI.
    pub kind: PvPanicKind,
    /// The device id (optional; needed to unplug a PCI one).
    #[serde(default)]
    pub id: Option<String>,
    /// The events the guest may report (`events=`): a mask of [`PvPanic::PANICKED`],
    /// [`PvPanic::CRASH_LOADED`] and [`PvPanic::SHUTDOWN`]. QEMU's default (all) when unset.
    #[serde(default)]
    pub events: Option<u8>,
    /// PCI only: the bus (a bridge or root port id).
    #[serde(default)]
    pub bus: Option<String>,
    /// PCI only: the address on the bus.
    #[serde(default)]
    pub addr: Option<PciAddr>,
}

impl PvPanic {
    /// Event bit: the guest panicked.
    pub const PANICKED: u8 = 1;
    /// Event bit: the guest loaded a crash kernel (kdump) after panicking.
    pub const CRASH_LOADED: u8 = 2;
    /// Event bit: the guest shut down (QEMU ≥ 9).
    pub const SHUTDOWN: u8 = 4;

    /// A device of `kind` with QEMU's defaults.
    pub fn new(kind: PvPanicKind) -> Self {
        PvPanic {
            kind,
            id: None,
            events: None,
            bus: None,
            addr: None,
        }
    }

    /// The ISA device (`pvpanic`), for x86.
    pub fn isa() -> Self {
        PvPanic::new(PvPanicKind::Isa)
    }

    /// The PCI device (`pvpanic-pci`), for arm64 and other PCI machines.
    pub fn pci() -> Self {
        PvPanic::new(PvPanicKind::Pci)
    }

    fn driver(&self) -> &'static str {
        match self.kind {
            PvPanicKind::Isa => "pvpanic",
            PvPanicKind::Pci => "pvpanic-pci",
        }
    }
}

impl QemuDevice for PvPanic {
    fn kind(&self) -> &'static str {
        "pvpanic"
    }

    fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_opt_id(what, "id", self.id.as_deref())?;
        check_opt_id(what, "bus", self.bus.as_deref())?;
        let all = PvPanic::PANICKED | PvPanic::CRASH_LOADED | PvPanic::SHUTDOWN;
        if let Some(events) = self.events {
            if events & !all != 0 {
                return Err(invalid(
                    what,
                    "events",
                    events,
                    "known bits are 1 (panicked), 2 (crash loaded) and 4 (shutdown)",
                ));
            }
        }
        if self.kind == PvPanicKind::Isa {
            if self.bus.is_some() {
                return Err(invalid(what, "bus", "set", "applies to pvpanic-pci only"));
            }
            if self.addr.is_some() {
                return Err(invalid(what, "addr", "set", "applies to pvpanic-pci only"));
            }
        }
        Ok(())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::device(
            self.driver(),
            Props::new()
                .opt("id", self.id.as_deref())
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
                .opt("events", self.events),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{bad_id, id, pci_addr, Cases};
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm `PVPanicDevice`: `-device pvpanic` (+ `-no-shutdown` with `NoShutdown`). The device
    /// is identical; `-no-shutdown` is the VM configuration's business, not emitted here.
    #[test]
    fn govmm_reference_case() {
        let pvpanic = PvPanic::isa();
        let parts = pvpanic.parts().unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(
            parts[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
            ["-device", "pvpanic"]
        );
    }

    #[test]
    fn pci_hotplug_and_json() {
        let mut dev = PvPanic::pci();
        dev.id = Some("pp0".into());
        dev.bus = Some("rp0".into());
        dev.addr = Some(PciAddr::slot_only(0).unwrap());
        dev.events = Some(3);
        let part = &dev.parts().unwrap()[0];
        assert_eq!(
            part.render(Syntax::Options, &mut NoFds).unwrap(),
            "pvpanic-pci,id=pp0,bus=rp0,addr=00,events=3"
        );
        let add = part.qmp_add(&mut NoFds).unwrap();
        assert_eq!(add.command, "device_add");
        assert_eq!(
            add.arguments,
            json!({"driver": "pvpanic-pci", "id": "pp0", "bus": "rp0", "addr": "00", "events": 3})
        );
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"pvpanic-pci","id":"pp0","bus":"rp0","addr":"00","events":3}"#
        );
        assert_eq!(dev.id(), Some("pp0"));
    }

    #[test]
    fn errors_name_the_field() {
        let mut dev = PvPanic::isa();
        dev.bus = Some("pci.0".into());
        assert!(dev.validate().unwrap_err().to_string().contains("`bus`"));
        let mut dev = PvPanic::pci();
        dev.events = Some(8);
        assert_eq!(
            dev.parts().unwrap_err().to_string(),
            "pvpanic: invalid `events` \"8\": known bits are 1 (panicked), 2 (crash loaded) \
             and 4 (shutdown)"
        );
        dev.events = None;
        dev.id = Some("a,b".into());
        assert!(dev
            .validate()
            .unwrap_err()
            .to_string()
            .contains("invalid id"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let dev: PvPanic =
            toml::from_str("kind = \"pci\"\nid = \"pp0\"\naddr = \"05\"\nevents = 1").unwrap();
        assert_eq!(dev.kind, PvPanicKind::Pci);
        assert_eq!(dev.addr, Some(PciAddr::slot_only(5).unwrap()));
        let again: PvPanic = toml::from_str(&toml::to_string(&dev).unwrap()).unwrap();
        assert_eq!(again, dev);
        assert!(toml::from_str::<PvPanic>("kind = \"isa\"\nno_shutdown = true").is_err());
        assert!(toml::from_str::<PvPanic>("kind = \"mmio\"").is_err());
    }

    fn pvpanic() -> impl Strategy<Value = PvPanic> {
        let pci = (proptest::option::of(id()), proptest::option::of(pci_addr()))
            .prop_map(|(bus, addr)| (PvPanicKind::Pci, bus, addr));
        let kind = prop_oneof![pci, Just((PvPanicKind::Isa, None, None))];
        (
            kind,
            proptest::option::of(id()),
            proptest::option::of(0u8..8),
        )
            .prop_map(|((kind, bus, addr), id, events)| PvPanic {
                kind,
                id,
                events,
                bus,
                addr,
            })
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        Cases::new(pvpanic())
            .fault("id", bad_id(), |d, v| d.id = Some(v))
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .fault("events", 8u8.., |d, v| d.events = Some(v))
            .fault("bus", id(), |d, v| {
                d.kind = PvPanicKind::Isa;
                d.bus = Some(v);
            })
            .fault("addr", pci_addr(), |d, v| {
                *d = PvPanic {
                    kind: PvPanicKind::Isa,
                    bus: None,
                    addr: Some(v),
                    ..d.clone()
                }
            })
            .check();
    }
}

//! Character devices: `-chardev` backends ([`Chardev`], [`CharBackend`]), the virtio-serial
//! controller ([`SerialController`]), its ports ([`CharDevice`]: `virtconsole` and
//! `virtserialport`), and the legacy serial port ([`LegacySerial`], `-serial chardev:<id>`).
//!
//! Kata's console (`virtconsole` on a socket) and agent channel (`virtserialport` named
//! `agent.channel.0`) are [`CharDevice`]s on a [`SerialController`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Error, Result};
use crate::fd::FdArg;
use crate::id::{check_id, check_opt_id};
use crate::part::{Part, PartKind};
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::{path_str, VirtioOpts};

/// The most ports a virtio-serial controller takes (QEMU: "maximum ports supported: 511").
pub const MAX_SERIAL_PORTS: u32 = 511;

/// Where a character device's bytes go.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CharBackend {
    /// A Unix stream socket (`socket`), given by `path` or by an already-open `fd`
    /// (exactly one of the two).
    Socket {
        /// The socket's path.
        #[serde(default)]
        path: Option<PathBuf>,
        /// An open socket (listening when `server`), instead of `path`.
        #[serde(default)]
        fd: Option<FdArg>,
        /// Listen for a connection (`server=on`) instead of connecting.
        #[serde(default)]
        server: bool,
        /// With `server`: wait for a client before the guest starts (`wait=on`). Kata's
        /// console and agent sockets use `wait=off`. Setting it without `server` is an error
        /// (QEMU refuses `wait` in client mode).
        #[serde(default)]
        wait: bool,
    },
    /// A named pipe pair `<path>.in` / `<path>.out`, or the FIFO `<path>` (`pipe`).
    Pipe {
        /// The pipe's path.
        path: PathBuf,
    },
    /// Output written to a file (`file`).
    File {
        /// The file's path.
        path: PathBuf,
    },
    /// A new pseudo-terminal (`pty`); QEMU reports its path.
    Pty,
    /// A host serial device such as `/dev/ttyS0` (`serial`; `tty` is QEMU's alias).
    Serial {
        /// The device node's path.
        path: PathBuf,
    },
    /// Discard output, never any input (`null`).
    Null,
}

impl CharBackend {
    /// A Unix socket QEMU listens on without waiting for a client (`server=on,wait=off`),
    /// as Kata uses for its console and agent channel.
    pub fn server_socket(path: impl Into<PathBuf>) -> Self {
        CharBackend::Socket {
            path: Some(path.into()),
            fd: None,
            server: true,
            wait: false,
        }
    }

    /// A Unix socket QEMU connects to (client mode).
    pub fn client_socket(path: impl Into<PathBuf>) -> Self {
        CharBackend::Socket {
            path: Some(path.into()),
            fd: None,
            server: false,
            wait: false,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            CharBackend::Socket { .. } => "socket",
            CharBackend::Pipe { .. } => "pipe",
            CharBackend::File { .. } => "file",
            CharBackend::Pty => "pty",
            CharBackend::Serial { .. } => "serial",
            CharBackend::Null => "null",
        }
    }
}

/// A `-chardev` / `chardev-add`: an id and a backend.
///
/// ```
/// use hvarch_devices::chardev::{CharBackend, Chardev};
/// use hvarch_devices::{fd::NoFds, part::Syntax};
/// let chardev = Chardev::new("char0", CharBackend::server_socket("/run/vm/console.sock"));
/// assert_eq!(
///     chardev.part().unwrap().to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-chardev", "socket,id=char0,path=/run/vm/console.sock,server=on,wait=off"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chardev {
    /// The chardev id (what a frontend's `chardev=` names).
    pub id: String,
    /// Where the bytes go.
    pub backend: CharBackend,
}

impl Chardev {
    /// A chardev `id` on `backend`.
    pub fn new(id: impl Into<String>, backend: CharBackend) -> Self {
        Chardev {
            id: id.into(),
            backend,
        }
    }

    /// Checks the id, the paths and the socket settings.
    pub fn validate(&self) -> Result<()> {
        const WHAT: &str = "chardev";
        check_id(WHAT, "id", &self.id)?;
        match &self.backend {
            CharBackend::Socket {
                path,
                fd,
                server,
                wait,
            } => {
                match (path, fd) {
                    (Some(_), Some(_)) => {
                        return Err(Error::Conflict {
                            what: WHAT,
                            field: "path",
                            other: "fd",
                        })
                    }
                    (None, None) => {
                        return Err(Error::MissingField {
                            what: WHAT,
                            field: "path",
                        })
                    }
                    (Some(path), None) => {
                        path_str(WHAT, "path", path)?;
                    }
                    (None, Some(_)) => {}
                }
                if *wait && !*server {
                    return Err(invalid(
                        WHAT,
                        "wait",
                        true,
                        "applies to a listening socket only (server = true)",
                    ));
                }
            }
            CharBackend::Pipe { path }
            | CharBackend::File { path }
            | CharBackend::Serial { path } => {
                path_str(WHAT, "path", path)?;
            }
            CharBackend::Pty | CharBackend::Null => {}
        }
        Ok(())
    }

    /// The `-chardev` part (validated). Its props use the names [`Part::qmp_add`] maps to
    /// `chardev-add`: `path`, `fd`, `server`, `wait`.
    pub fn part(&self) -> Result<Part<'_>> {
        self.validate()?;
        const WHAT: &str = "chardev";
        let props = Props::new()
            .with("backend", self.backend.name())
            .with("id", self.id.as_str());
        let props = match &self.backend {
            CharBackend::Socket {
                path,
                fd,
                server,
                wait,
            } => {
                let path = match path {
                    Some(p) => Some(path_str(WHAT, "path", p)?),
                    None => None,
                };
                props
                    .opt("path", path)
                    .opt("fd", fd.as_ref())
                    .flag("server", *server)
                    .opt("wait", server.then_some(*wait))
            }
            CharBackend::Pipe { path }
            | CharBackend::File { path }
            | CharBackend::Serial { path } => props.with("path", path_str(WHAT, "path", path)?),
            CharBackend::Pty | CharBackend::Null => props,
        };
        Ok(Part::new(PartKind::Chardev, props))
    }
}

/// A virtio-serial controller (`virtio-serial-pci` / `-ccw` / `-device`): the bus its
/// [`CharDevice`] ports sit on (`<id>.0`).
///
/// ```
/// use hvarch_devices::chardev::SerialController;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut serial = SerialController::new("serial0");
/// serial.max_ports = Some(2);
/// assert_eq!(
///     serial.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "virtio-serial-pci,id=serial0,max_ports=2"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialController {
    /// The device id; its ports' bus is `<id>.0`.
    pub id: String,
    /// The number of ports (`max_ports=`, 1 to [`MAX_SERIAL_PORTS`]; QEMU's default 31).
    #[serde(default)]
    pub max_ports: Option<u32>,
    /// The bus (a bridge or root port id).
    #[serde(default)]
    pub bus: Option<String>,
    /// The address on the bus (PCI only).
    #[serde(default)]
    pub addr: Option<PciAddr>,
    /// Transport settings.
    #[serde(default)]
    pub virtio: VirtioOpts,
}

impl SerialController {
    /// A virtio-serial-pci controller `id`.
    pub fn new(id: impl Into<String>) -> Self {
        SerialController {
            id: id.into(),
            max_ports: None,
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        }
    }
}

impl QemuDevice for SerialController {
    fn kind(&self) -> &'static str {
        "virtio-serial"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        if let Some(n) = self.max_ports {
            if !(1..=MAX_SERIAL_PORTS).contains(&n) {
                return Err(invalid(
                    what,
                    "max_ports",
                    n,
                    format!("must be 1 to {MAX_SERIAL_PORTS}"),
                ));
            }
        }
        check_opt_id(what, "bus", self.bus.as_deref())?;
        self.virtio.validate_with_addr(what, self.addr)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::device(
            self.virtio.driver("virtio-serial"),
            Props::new()
                .with("id", self.id.as_str())
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
                .opt("max_ports", self.max_ports)
                .extend(self.virtio.props()),
        ))
    }
}

/// The frontend of a [`CharDevice`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortDriver {
    /// A console port (`virtconsole`): the guest's `hvc<N>`.
    Virtconsole,
    /// A named data port (`virtserialport`): the guest's `/dev/virtio-ports/<name>`.
    #[default]
    Virtserialport,
}

impl PortDriver {
    fn as_str(self) -> &'static str {
        match self {
            PortDriver::Virtconsole => "virtconsole",
            PortDriver::Virtserialport => "virtserialport",
        }
    }
}

/// A port on a virtio-serial controller (`virtconsole` / `virtserialport`) over its own
/// [`Chardev`]. Hot-pluggable: `chardev-add` then `device_add`.
///
/// ```
/// use hvarch_devices::chardev::{CharBackend, CharDevice, Chardev};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let mut port = CharDevice::new("channel0",
///     Chardev::new("char0", CharBackend::server_socket("/run/vm/agent.sock")));
/// port.bus = Some("serial0.0".into());
/// port.name = Some("agent.channel.0".into());
/// let args: Vec<String> = port.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, [
///     "-chardev", "socket,id=char0,path=/run/vm/agent.sock,server=on,wait=off",
///     "-device", "virtserialport,bus=serial0.0,chardev=char0,id=channel0,name=agent.channel.0",
/// ]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CharDevice {
    /// The device id.
    pub id: String,
    /// Console or named port (default `virtserialport`).
    #[serde(default)]
    pub driver: PortDriver,
    /// The chardev the port reads and writes.
    pub chardev: Chardev,
    /// The virtio-serial bus, `<controller id>.0` (e.g. `serial0.0`); QEMU picks one if unset.
    #[serde(default)]
    pub bus: Option<String>,
    /// The port name the guest sees (`name=`, e.g. `agent.channel.0`).
    #[serde(default)]
    pub name: Option<String>,
}

impl CharDevice {
    /// A `virtserialport` `id` over `chardev`.
    pub fn new(id: impl Into<String>, chardev: Chardev) -> Self {
        CharDevice {
            id: id.into(),
            driver: PortDriver::Virtserialport,
            chardev,
            bus: None,
            name: None,
        }
    }

    /// A `virtconsole` `id` over `chardev`.
    pub fn console(id: impl Into<String>, chardev: Chardev) -> Self {
        CharDevice {
            driver: PortDriver::Virtconsole,
            ..CharDevice::new(id, chardev)
        }
    }
}

impl QemuDevice for CharDevice {
    fn kind(&self) -> &'static str {
        self.driver.as_str()
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        self.chardev.validate()?;
        check_opt_id(what, "bus", self.bus.as_deref())?;
        if self.name.as_deref() == Some("") {
            return Err(invalid(
                what,
                "name",
                "",
                "is empty; leave it unset instead",
            ));
        }
        Ok(())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let device = Part::device(
            self.driver.as_str(),
            Props::new()
                .opt("bus", self.bus.as_deref())
                .with("chardev", self.chardev.id.as_str())
                .with("id", self.id.as_str())
                .opt("name", self.name.as_deref()),
        );
        emit(self.chardev.part()?)?;
        emit(device)
    }
}

/// A legacy serial port (`-serial chardev:<id>`: the machine's UART, e.g. the PL011 on arm64
/// `virt`, the 16550 on x86) over its own [`Chardev`]. Command line only.
///
/// ```
/// use hvarch_devices::chardev::{CharBackend, Chardev, LegacySerial};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let serial = LegacySerial::new(Chardev::new("ser0", CharBackend::Pty));
/// let args: Vec<String> = serial.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, ["-chardev", "pty,id=ser0", "-serial", "chardev:ser0"]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySerial {
    /// The chardev the port reads and writes.
    pub chardev: Chardev,
}

impl LegacySerial {
    /// A serial port on `chardev`.
    pub fn new(chardev: Chardev) -> Self {
        LegacySerial { chardev }
    }
}

impl QemuDevice for LegacySerial {
    fn kind(&self) -> &'static str {
        "legacy-serial"
    }

    /// None: the port has no device id (it cannot be unplugged).
    fn id(&self) -> Option<&str> {
        None
    }

    fn validate(&self) -> Result<()> {
        self.chardev.validate()
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let serial = Part::new(
            PartKind::Serial,
            Props::new().with("chardev", self.chardev.id.as_str()),
        );
        emit(self.chardev.part()?)?;
        emit(serial)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::{FdTable, NoFds, QmpFdNames};
    use crate::part::Syntax;
    use crate::test_support::{
        args, bad_id, bad_path, id, nul_text, path, qmp_adds, short_text, text, transport, Cases,
    };
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm's CharDevice reference case (kata-go.md §2.3). Deliberate differences: the
    /// `-chardev` comes first (backend before frontend); `server=on,wait=off` instead of the
    /// bare `server,nowait` flags QEMU ≥ 6 refuses.
    #[test]
    fn govmm_char_device_reference_case() {
        let port = CharDevice {
            name: Some("channel.0".into()),
            ..CharDevice::new(
                "channel0",
                Chardev::new("char0", CharBackend::server_socket("/tmp/char.sock")),
            )
        };
        assert_eq!(
            args(&port),
            [
                "-chardev",
                "socket,id=char0,path=/tmp/char.sock,server=on,wait=off",
                "-device",
                "virtserialport,chardev=char0,id=channel0,name=channel.0",
            ]
        );
    }

    /// govmm's SerialDevice reference case. Deliberate differences: `disable-modern=on`
    /// instead of `=true`; transport properties (`disable-modern`, `romfile`) come last, after
    /// `max_ports`.
    #[test]
    fn govmm_serial_controller_reference_case() {
        let mut serial = SerialController::new("serial0");
        serial.max_ports = Some(2);
        serial.virtio.disable_modern = true;
        serial.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&serial),
            [
                "-device",
                "virtio-serial-pci,id=serial0,max_ports=2,disable-modern=on,romfile=efi-virtio.rom"
            ]
        );
    }

    /// Kata's arm64 console: `max_ports` survives without a romfile (govmm HEAD dropped it),
    /// and no empty `romfile=` is emitted.
    #[test]
    fn kata_arm64_console_keeps_max_ports() {
        let mut serial = SerialController::new("serial0");
        serial.max_ports = Some(2);
        let console = CharDevice::console(
            "console0",
            Chardev::new(
                "charconsole0",
                CharBackend::server_socket("/run/vc/vm/x/console.sock"),
            ),
        );
        let mut all = args(&serial);
        all.extend(args(&console));
        assert_eq!(
            all,
            [
                "-device",
                "virtio-serial-pci,id=serial0,max_ports=2",
                "-chardev",
                "socket,id=charconsole0,path=/run/vc/vm/x/console.sock,server=on,wait=off",
                "-device",
                "virtconsole,chardev=charconsole0,id=console0",
            ]
        );
    }

    /// Hot plug matches govmm's `ExecuteCharDevUnixSocketAdd` + `ExecuteVirtSerialPortAdd`.
    #[test]
    fn qmp_matches_govmm() {
        let port = CharDevice {
            name: Some("agent.channel.0".into()),
            ..CharDevice::new(
                "channel0",
                Chardev::new("char0", CharBackend::server_socket("/run/agent.sock")),
            )
        };
        let calls = qmp_adds(&port);
        assert_eq!(calls[0].command, "chardev-add");
        assert_eq!(
            calls[0].arguments,
            json!({"id": "char0", "backend": {"type": "socket", "data": {
                "wait": false, "server": true,
                "addr": {"type": "unix", "data": {"path": "/run/agent.sock"}}}}})
        );
        assert_eq!(calls[1].command, "device_add");
        assert_eq!(
            calls[1].arguments,
            json!({"driver": "virtserialport", "id": "channel0",
                   "name": "agent.channel.0", "chardev": "char0"})
        );
        // Client mode: no `wait` at all (govmm HEAD sends it only for servers).
        let client = Chardev::new("c1", CharBackend::client_socket("/run/x.sock"));
        assert_eq!(
            client
                .part()
                .unwrap()
                .qmp_add(&mut NoFds)
                .unwrap()
                .arguments,
            json!({"id": "c1", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": "/run/x.sock"}}}}})
        );
        let del: Vec<_> = port
            .parts()
            .unwrap()
            .iter()
            .rev()
            .map(|p| p.qmp_del().unwrap().command)
            .collect();
        assert_eq!(del, ["device_del", "chardev-remove"]);
    }

    #[test]
    fn socket_on_a_passed_descriptor() {
        let fd = FdArg::from(std::os::fd::OwnedFd::from(
            std::fs::File::open("/dev/null").unwrap(),
        ));
        let chardev = Chardev::new(
            "charmonitor",
            CharBackend::Socket {
                path: None,
                fd: Some(fd),
                server: true,
                wait: false,
            },
        );
        let part = chardev.part().unwrap();
        let mut table = FdTable::new();
        assert_eq!(
            part.render(Syntax::Options, &mut table).unwrap(),
            "socket,id=charmonitor,fd=3,server=on,wait=off"
        );
        let mut names = QmpFdNames::new("chr");
        assert_eq!(
            part.qmp_add(&mut names).unwrap().arguments,
            json!({"id": "charmonitor", "backend": {"type": "socket", "data": {
                "addr": {"type": "fd", "data": {"str": "chr0"}},
                "server": true, "wait": false}}})
        );
        assert_eq!(names.pending().len(), 1);
    }

    #[test]
    fn other_backends() {
        let render = |b: CharBackend| {
            Chardev::new("c", b)
                .part()
                .unwrap()
                .render(Syntax::Options, &mut NoFds)
                .unwrap()
        };
        assert_eq!(
            render(CharBackend::Pipe {
                path: "/tmp/p".into()
            }),
            "pipe,id=c,path=/tmp/p"
        );
        assert_eq!(
            render(CharBackend::File {
                path: "/tmp/log,1".into()
            }),
            "file,id=c,path=/tmp/log,,1"
        );
        assert_eq!(
            render(CharBackend::Serial {
                path: "/dev/ttyS0".into()
            }),
            "serial,id=c,path=/dev/ttyS0"
        );
        assert_eq!(render(CharBackend::Null), "null,id=c");
        let file = Chardev::new(
            "c",
            CharBackend::File {
                path: "/tmp/log".into(),
            },
        );
        assert_eq!(
            file.part().unwrap().qmp_add(&mut NoFds).unwrap().arguments,
            json!({"id": "c", "backend": {"type": "file", "data": {"out": "/tmp/log"}}})
        );
    }

    #[test]
    fn legacy_serial_is_command_line_only() {
        let serial = LegacySerial::new(Chardev::new(
            "ser0",
            CharBackend::File {
                path: "/tmp/ser.log".into(),
            },
        ));
        let parts = serial.parts().unwrap();
        assert_eq!(
            parts[1].to_args(Syntax::Json, &mut NoFds).unwrap(),
            ["-serial", "chardev:ser0"]
        );
        assert!(matches!(
            parts[1].qmp_add(&mut NoFds).unwrap_err(),
            Error::NotHotpluggable {
                option: "-serial",
                ..
            }
        ));
        assert_eq!(serial.id(), None);
    }

    #[test]
    fn json_syntax() {
        let mut serial = SerialController::new("serial0");
        serial.max_ports = Some(2);
        serial.addr = Some(PciAddr::slot_only(3).unwrap());
        assert_eq!(
            serial.parts().unwrap()[0]
                .render(Syntax::Json, &mut NoFds)
                .unwrap(),
            r#"{"driver":"virtio-serial-pci","id":"serial0","addr":"03","max_ports":2}"#
        );
        // -chardev has no JSON syntax on the command line: it stays in option syntax.
        let chardev = Chardev::new("c", CharBackend::Pty);
        assert_eq!(
            chardev
                .part()
                .unwrap()
                .render(Syntax::Json, &mut NoFds)
                .unwrap(),
            "pty,id=c"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let socket = |path: Option<&str>, server, wait| CharBackend::Socket {
            path: path.map(PathBuf::from),
            fd: None,
            server,
            wait,
        };
        let err = Chardev::new("c", socket(Some("/s"), false, true))
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("`wait`"), "{err}");
        Chardev::new("c", socket(Some("/s"), true, true))
            .validate()
            .unwrap();
        assert_eq!(
            Chardev::new("c", socket(None, true, false))
                .validate()
                .unwrap_err(),
            Error::MissingField {
                what: "chardev",
                field: "path"
            }
        );
        let both = CharBackend::Socket {
            path: Some("/s".into()),
            fd: Some(FdArg::Named("f".into())),
            server: false,
            wait: false,
        };
        assert_eq!(
            Chardev::new("c", both).validate().unwrap_err(),
            Error::Conflict {
                what: "chardev",
                field: "path",
                other: "fd"
            }
        );
        let mut serial = SerialController::new("serial0");
        for bad in [0, MAX_SERIAL_PORTS + 1] {
            serial.max_ports = Some(bad);
            let msg = serial.validate().unwrap_err().to_string();
            assert!(msg.contains("max_ports"), "{msg}");
        }
        serial.max_ports = Some(MAX_SERIAL_PORTS);
        serial.validate().unwrap();
        let mut port = CharDevice::new("p0", Chardev::new("c0", CharBackend::Pty));
        port.name = Some(String::new());
        assert!(port.validate().unwrap_err().to_string().contains("`name`"));
        port.name = None;
        port.bus = Some("serial0/0".into());
        assert!(port.validate().unwrap_err().to_string().contains("bus"));
        let ser = LegacySerial::new(Chardev::new("0ser", CharBackend::Pty));
        assert!(ser.parts().unwrap_err().to_string().contains("invalid id"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "channel0"
            bus = "serial0.0"
            name = "agent.channel.0"
            [chardev]
            id = "charch0"
            backend = { type = "socket", path = "/run/vm/kata.sock", server = true }
        "#;
        let port: CharDevice = toml::from_str(text).unwrap();
        assert_eq!(port.driver, PortDriver::Virtserialport);
        assert_eq!(
            port.chardev.backend,
            CharBackend::server_socket("/run/vm/kata.sock")
        );
        let again: CharDevice = toml::from_str(&toml::to_string(&port).unwrap()).unwrap();
        assert_eq!(again, port);
        assert!(toml::from_str::<CharDevice>(&format!("{text}\nbogus = 1")).is_err());
        let bad_backend = text.replace("server = true", "server = true, nowait = true");
        assert!(toml::from_str::<CharDevice>(&bad_backend).is_err());

        let device: crate::Device =
            toml::from_str("type = \"serial-controller\"\nid = \"serial0\"\nmax_ports = 2\n")
                .unwrap();
        assert_eq!(device.id(), Some("serial0"));
        let device: crate::Device = toml::from_str(
            "type = \"legacy-serial\"\n[chardev]\nid = \"s\"\nbackend = { type = \"pty\" }\n",
        )
        .unwrap();
        assert_eq!(device.kind(), "legacy-serial");
        let device: crate::Device =
            toml::from_str(&format!("type = \"char-device\"\n{}", text.trim_start())).unwrap();
        assert_eq!(device, crate::Device::from(port));
    }

    /// Valid backends: a socket on a path or a named descriptor (listening or not), a pipe,
    /// file or serial device path, a pty, null.
    fn backend() -> impl Strategy<Value = CharBackend> {
        let endpoint = prop_oneof![
            path().prop_map(|p| (Some(p), None)),
            text().prop_map(|name| (None, Some(FdArg::Named(name)))),
        ];
        let listen = prop_oneof![Just((false, false)), any::<bool>().prop_map(|w| (true, w))];
        prop_oneof![
            3 => (endpoint, listen).prop_map(|((path, fd), (server, wait))| CharBackend::Socket {
                path,
                fd,
                server,
                wait,
            }),
            1 => path().prop_map(|path| CharBackend::Pipe { path }),
            1 => path().prop_map(|path| CharBackend::File { path }),
            1 => path().prop_map(|path| CharBackend::Serial { path }),
            1 => Just(CharBackend::Pty),
            1 => Just(CharBackend::Null),
        ]
    }

    fn chardev() -> impl Strategy<Value = Chardev> {
        (id(), backend()).prop_map(|(id, backend)| Chardev::new(id, backend))
    }

    /// A socket chardev with `path` and `fd` as given (what the faults below break).
    fn socket(path: Option<PathBuf>, fd: Option<FdArg>, server: bool, wait: bool) -> CharBackend {
        CharBackend::Socket {
            path,
            fd,
            server,
            wait,
        }
    }

    /// Adds the faults of a device's own chardev, reached through `get`.
    fn chardev_faults<D: QemuDevice + std::fmt::Debug + 'static>(
        cases: Cases<D>,
        get: fn(&mut D) -> &mut Chardev,
    ) -> Cases<D> {
        cases
            .fault("id", bad_id(), move |d, v| get(d).id = v)
            .fault("path", bad_path(), move |d, v| {
                get(d).backend = CharBackend::File { path: v }
            })
            .fault("path", nul_text(), move |d, v| {
                get(d).backend = CharBackend::Pipe { path: v.into() }
            })
            .fault("path", Just(()), move |d, ()| {
                get(d).backend = socket(None, None, true, false)
            })
            .fault("path", (path(), text()), move |d, (p, fd)| {
                get(d).backend = socket(Some(p), Some(FdArg::Named(fd)), false, false)
            })
            .fault("wait", path(), move |d, p| {
                get(d).backend = socket(Some(p), None, false, true)
            })
            .fault("fd", nul_text(), move |d, fd| {
                get(d).backend = socket(None, Some(FdArg::Named(fd)), true, true)
            })
    }

    #[test]
    fn port_parts_round_trip_and_faults_name_their_field() {
        let driver =
            prop::sample::select(vec![PortDriver::Virtconsole, PortDriver::Virtserialport]);
        let port = (
            id(),
            driver,
            chardev(),
            proptest::option::of(id()),
            proptest::option::of(short_text(64)),
        )
            .prop_map(|(id, driver, chardev, bus, name)| CharDevice {
                driver,
                bus,
                name,
                ..CharDevice::new(id, chardev)
            });
        let cases = Cases::new(port)
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .fault("name", Just(String::new()), |d, v| d.name = Some(v))
            .fault("name", nul_text(), |d, v| d.name = Some(v));
        chardev_faults(cases, |d| &mut d.chardev).check();
    }

    #[test]
    fn legacy_serial_parts_round_trip_and_faults_name_their_field() {
        chardev_faults(Cases::new(chardev().prop_map(LegacySerial::new)), |d| {
            &mut d.chardev
        })
        .check();
    }

    #[test]
    fn controller_parts_round_trip_and_faults_name_their_field() {
        let controller = (
            id(),
            proptest::option::of(1..=MAX_SERIAL_PORTS),
            proptest::option::of(id()),
            transport(),
        )
            .prop_map(|(id, max_ports, bus, (virtio, addr))| SerialController {
                max_ports,
                bus,
                addr,
                virtio,
                ..SerialController::new(id)
            });
        Cases::new(controller)
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault(
                "max_ports",
                prop_oneof![Just(0), MAX_SERIAL_PORTS + 1..],
                |d, v| d.max_ports = Some(v),
            )
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .virtio_faults(|d| (&mut d.virtio, &mut d.addr))
            .check();
    }
}

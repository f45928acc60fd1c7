//! [`Part`]: one QEMU object of a device (`-device`, `-blockdev`, `-chardev`, …), the unit
//! every rendering works on.
//!
//! A device is a list of parts in creation order, backends first. The same part renders to
//! an argument in option syntax, to QEMU's JSON argument syntax, or to the QMP command that
//! creates it at run time ([`Part::qmp_add`]) and the one that removes it ([`Part::qmp_del`]).

use std::borrow::Cow;

use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::fd::FdResolver;
use crate::props::{Props, Value};
use crate::syntax::{render_json, write_options};

/// Which QEMU option a [`Part`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PartKind {
    /// `-device` / `device_add`; implied key `driver`, id key `id`.
    Device,
    /// `-blockdev` / `blockdev-add`; no implied key, id key `node-name`.
    Blockdev,
    /// `-drive` (legacy, command line only); id key `id`.
    Drive,
    /// `-chardev` / `chardev-add`; implied key `backend`, id key `id`.
    Chardev,
    /// `-netdev` / `netdev_add`; implied key `type`, id key `id`.
    Netdev,
    /// `-object` / `object-add`; implied key `qom-type`, id key `id`.
    Object,
    /// `-fsdev` (command line only); implied key `fsdriver`, id key `id`.
    Fsdev,
    /// `-serial chardev:<id>` (legacy serial port); property `chardev`.
    Serial,
    /// `-fw_cfg name=…,file=…|string=…`.
    FwCfg,
}

impl PartKind {
    /// The command-line option, e.g. `-device`.
    pub fn option(self) -> &'static str {
        match self {
            PartKind::Device => "-device",
            PartKind::Blockdev => "-blockdev",
            PartKind::Drive => "-drive",
            PartKind::Chardev => "-chardev",
            PartKind::Netdev => "-netdev",
            PartKind::Object => "-object",
            PartKind::Fsdev => "-fsdev",
            PartKind::Serial => "-serial",
            PartKind::FwCfg => "-fw_cfg",
        }
    }

    /// The key whose value is written first without `key=` in option syntax.
    pub fn implied_key(self) -> Option<&'static str> {
        match self {
            PartKind::Device => Some("driver"),
            PartKind::Chardev => Some("backend"),
            PartKind::Netdev => Some("type"),
            PartKind::Object => Some("qom-type"),
            PartKind::Fsdev => Some("fsdriver"),
            PartKind::Blockdev | PartKind::Drive | PartKind::Serial | PartKind::FwCfg => None,
        }
    }

    /// The key holding the part's identifier.
    pub fn id_key(self) -> &'static str {
        match self {
            PartKind::Blockdev => "node-name",
            PartKind::Serial => "chardev",
            PartKind::FwCfg => "name",
            _ => "id",
        }
    }

    /// Whether QEMU accepts this option in JSON syntax on its command line.
    pub fn has_json_syntax(self) -> bool {
        matches!(
            self,
            PartKind::Device | PartKind::Blockdev | PartKind::Netdev | PartKind::Object
        )
    }
}

/// The syntax to render command-line arguments in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Syntax {
    /// `key=value,…` with commas doubled in values.
    #[default]
    Options,
    /// QEMU's JSON syntax where the option supports it (`-device`, `-blockdev`, `-netdev`,
    /// `-object`); the others (`-chardev`, `-fsdev`, `-drive`, …) stay in option syntax.
    Json,
}

/// A QMP command as data: what the caller sends with its QMP client.
#[derive(Clone, Debug, PartialEq)]
pub struct QmpCall {
    /// The command name, e.g. `device_add`.
    pub command: &'static str,
    /// The `arguments` object.
    pub arguments: Json,
}

/// One QEMU object: a kind and its ordered properties, borrowing from the device it renders
/// (for `'a`).
#[derive(Clone, Debug, PartialEq)]
pub struct Part<'a> {
    kind: PartKind,
    props: Props<'a>,
}

impl<'a> Part<'a> {
    /// A part of `kind` with `props`. For kinds with an implied key, `props` must start with it.
    #[inline]
    pub fn new(kind: PartKind, props: Props<'a>) -> Part<'a> {
        Part { kind, props }
    }

    /// A `-device` whose driver is `driver`, followed by `props`.
    #[inline]
    pub fn device(driver: impl Into<Cow<'a, str>>, props: Props<'a>) -> Part<'a> {
        Part::new(
            PartKind::Device,
            props.prepend("driver", Value::Str(driver.into())),
        )
    }

    /// An `-object` of QOM type `qom_type` with id `id`, followed by `props`.
    #[inline]
    pub fn object(qom_type: &'a str, id: &'a str, props: Props<'a>) -> Part<'a> {
        Part::new(
            PartKind::Object,
            props.prepend("id", id).prepend("qom-type", qom_type),
        )
    }

    /// The option kind.
    pub fn kind(&self) -> PartKind {
        self.kind
    }

    /// The properties, implied key included.
    pub fn props(&self) -> &Props<'a> {
        &self.props
    }

    /// The identifier (`id`, `node-name`, …), if set.
    pub fn id(&self) -> Option<&str> {
        self.props.get_str(self.kind.id_key())
    }

    /// The identifier as stored (borrowed from the device when it is one of its fields), so it
    /// can outlive this part.
    pub(crate) fn id_value(&self) -> Option<Cow<'a, str>> {
        match self.props.get(self.kind.id_key()) {
            Some(Value::Str(id)) => Some(id.clone()),
            _ => None,
        }
    }

    /// The value of the implied key (driver, backend, type…), if any.
    pub fn implied(&self) -> Option<&str> {
        self.kind.implied_key().and_then(|k| self.props.get_str(k))
    }

    /// The option's value text in `syntax` (see [`Syntax`] for which options support JSON).
    pub fn render(&self, syntax: Syntax, fds: &mut dyn FdResolver) -> Result<String> {
        let mut out = String::with_capacity(128);
        self.write(&mut out, syntax, fds)?;
        Ok(out)
    }

    /// [`render`](Self::render), appending to `out`.
    pub fn write(&self, out: &mut String, syntax: Syntax, fds: &mut dyn FdResolver) -> Result<()> {
        let what = self.kind.option();
        if syntax == Syntax::Json && self.kind.has_json_syntax() {
            out.push_str(&render_json(what, &self.props, fds)?.to_string());
            return Ok(());
        }
        if self.kind == PartKind::Serial {
            out.push_str("chardev:");
            out.push_str(self.props.get_str("chardev").unwrap_or_default());
            return Ok(());
        }
        let start = out.len();
        // The implied key's value goes first without its key (parts are built with it first,
        // so the search ends at once); the other properties follow in order.
        let implied = self.kind.implied_key().and_then(|key| {
            match self
                .props
                .iter()
                .enumerate()
                .find(|(_, (k, _))| *k == key)?
            {
                (index, (key, Value::Str(value))) => Some((index, key, value.as_ref())),
                _ => None,
            }
        });
        match implied {
            Some((index, key, value)) => {
                let (before, after) = (self.props.iter().take(index), self.props.iter());
                let others = before.chain(after.skip(index + 1));
                write_options(out, start, what, Some((key, value)), others, fds)
            }
            None => write_options(out, start, what, None, self.props.iter(), fds),
        }
    }

    /// The two command-line arguments, e.g. `["-device", "virtio-rng-pci,rng=rng0"]`.
    pub fn to_args(&self, syntax: Syntax, fds: &mut dyn FdResolver) -> Result<[String; 2]> {
        Ok([self.kind.option().to_owned(), self.render(syntax, fds)?])
    }

    /// The QMP command that creates this part in a running QEMU.
    ///
    /// `-drive`, `-fsdev`, `-serial` and `-fw_cfg` have no QMP counterpart and give
    /// [`Error::NotHotpluggable`].
    pub fn qmp_add(&self, fds: &mut dyn FdResolver) -> Result<QmpCall> {
        let what = self.kind.option();
        let command = match self.kind {
            PartKind::Device => "device_add",
            PartKind::Blockdev => "blockdev-add",
            PartKind::Netdev => "netdev_add",
            PartKind::Object => "object-add",
            PartKind::Chardev => {
                return Ok(QmpCall {
                    command: "chardev-add",
                    arguments: chardev_add_arguments(&self.props, fds)?,
                })
            }
            PartKind::Drive | PartKind::Fsdev | PartKind::Serial | PartKind::FwCfg => {
                return Err(Error::NotHotpluggable {
                    what: self.implied().unwrap_or(what).to_owned(),
                    option: what,
                })
            }
        };
        Ok(QmpCall {
            command,
            arguments: render_json(what, &self.props, fds)?,
        })
    }

    /// The QMP command that removes this part, if it can be removed at run time.
    pub fn qmp_del(&self) -> Option<QmpCall> {
        let id = self.id()?.to_owned();
        let (command, arguments) = match self.kind {
            PartKind::Device => ("device_del", json!({ "id": id })),
            PartKind::Blockdev => ("blockdev-del", json!({ "node-name": id })),
            PartKind::Netdev => ("netdev_del", json!({ "id": id })),
            PartKind::Object => ("object-del", json!({ "id": id })),
            PartKind::Chardev => ("chardev-remove", json!({ "id": id })),
            PartKind::Drive | PartKind::Fsdev | PartKind::Serial | PartKind::FwCfg => return None,
        };
        Some(QmpCall { command, arguments })
    }
}

/// Maps `-chardev` properties to `chardev-add`'s `ChardevBackend` structure.
fn chardev_add_arguments(props: &Props<'_>, fds: &mut dyn FdResolver) -> Result<Json> {
    let text = |key: &str| props.get_str(key).map(str::to_owned);
    let boolean = |key: &str| match props.get(key) {
        Some(Value::Bool(b)) => Some(*b),
        _ => None,
    };
    let backend = props.get_str("backend").unwrap_or_default();
    let id = text("id").unwrap_or_default();
    let not_hotpluggable = || Error::NotHotpluggable {
        what: format!("chardev {backend}"),
        option: "-chardev",
    };
    let data = match backend {
        "socket" => {
            let addr = match (text("path"), props.get("fd")) {
                (Some(path), _) => json!({ "type": "unix", "data": { "path": path } }),
                (None, Some(Value::Fd(fd))) => {
                    json!({ "type": "fd", "data": { "str": fds.resolve(fd)? } })
                }
                _ => return Err(not_hotpluggable()),
            };
            let mut data = json!({ "addr": addr });
            if let Some(server) = boolean("server") {
                data["server"] = Json::Bool(server);
            }
            if let Some(wait) = boolean("wait") {
                data["wait"] = Json::Bool(wait);
            }
            data
        }
        "file" => json!({ "out": text("path").unwrap_or_default() }),
        "pipe" | "serial" | "tty" => json!({ "device": text("path").unwrap_or_default() }),
        "pty" | "null" => json!({}),
        _ => return Err(not_hotpluggable()),
    };
    Ok(json!({ "id": id, "backend": { "type": backend, "data": data } }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;

    #[test]
    fn device_renders_in_both_syntaxes() {
        let part = Part::device(
            "virtio-blk-pci",
            Props::new().with("drive", "d0").with("id", "blk0"),
        );
        assert_eq!(
            part.to_args(Syntax::Options, &mut NoFds).unwrap(),
            ["-device", "virtio-blk-pci,drive=d0,id=blk0"]
        );
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"virtio-blk-pci","drive":"d0","id":"blk0"}"#
        );
        assert_eq!(part.id(), Some("blk0"));
        let add = part.qmp_add(&mut NoFds).unwrap();
        assert_eq!(add.command, "device_add");
        assert_eq!(
            add.arguments,
            json!({"driver": "virtio-blk-pci", "drive": "d0", "id": "blk0"})
        );
        assert_eq!(
            part.qmp_del().unwrap(),
            QmpCall {
                command: "device_del",
                arguments: json!({"id": "blk0"})
            }
        );
    }

    /// The implied key goes first wherever the list holds it; a NUL in it is reported under
    /// its key; without it every property keeps its key.
    #[test]
    fn the_implied_key_is_written_first_without_its_key() {
        let render = |props: Props<'static>| {
            Part::new(PartKind::Device, props).render(Syntax::Options, &mut NoFds)
        };
        let later = Props::new()
            .with("id", "rng0")
            .with("driver", "virtio-rng-pci");
        assert_eq!(render(later).unwrap(), "virtio-rng-pci,id=rng0");
        let nul = Props::new()
            .with("id", "rng0")
            .with("driver", "virtio\0rng");
        let err = render(nul).unwrap_err().to_string();
        assert!(err.contains("driver"), "{err}");
        let none = Props::new().with("id", "rng0").with("romfile", "a,b");
        assert_eq!(render(none).unwrap(), "id=rng0,romfile=a,,b");
    }

    #[test]
    fn chardev_socket_maps_to_chardev_add() {
        let part = Part::new(
            PartKind::Chardev,
            Props::new()
                .with("backend", "socket")
                .with("id", "char0")
                .with("path", "/run/a.sock")
                .with("server", true)
                .with("wait", false),
        );
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            "socket,id=char0,path=/run/a.sock,server=on,wait=off"
        );
        assert_eq!(
            part.qmp_add(&mut NoFds).unwrap().arguments,
            json!({"id": "char0", "backend": {"type": "socket", "data": {
                "addr": {"type": "unix", "data": {"path": "/run/a.sock"}},
                "server": true, "wait": false}}})
        );
        assert_eq!(part.qmp_del().unwrap().command, "chardev-remove");
    }

    #[test]
    fn drive_is_not_hotpluggable() {
        let part = Part::new(PartKind::Drive, Props::new().with("id", "d"));
        let err = part.qmp_add(&mut NoFds).unwrap_err();
        assert!(matches!(
            err,
            Error::NotHotpluggable {
                option: "-drive",
                ..
            }
        ));
        assert!(part.qmp_del().is_none());
    }
}

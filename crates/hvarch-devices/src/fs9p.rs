//! 9p shared directories: the `-fsdev` export ([`FsBackend`]) and the virtio-9p frontend
//! ([`FsDevice`]).
//!
//! `-fsdev` has no QMP counterpart, so a 9p share can only be cold-plugged: [`Part::qmp_add`]
//! of its `-fsdev` part gives [`Error::NotHotpluggable`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Error, Result};
use crate::id::{check_id, check_opt_id};
use crate::part::{Part, PartKind};
use crate::pci::PciAddr;
use crate::props::Props;
use crate::transport::{path_str, VirtioOpts};

/// The longest mount tag virtio-9p accepts, in bytes (QEMU: "is longer than maximum (31 bytes)").
pub const MAX_MOUNT_TAG_LEN: usize = 31;

/// The filesystem driver of an `-fsdev`.
///
/// QEMU 10 has only `local` (plus `synth`, a test driver). The `handle` driver was removed in
/// QEMU 6.0 and the `proxy` driver (with its `virtfs-proxy-helper`) was deprecated in 8.1 and
/// has since been removed: QEMU 10.0.2 answers `fsdriver handle not found` /
/// `fsdriver proxy not found`, so neither is offered here.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FsDriver {
    /// Files of a host directory, accessed by QEMU itself (`local`).
    #[default]
    Local,
}

impl FsDriver {
    fn as_str(self) -> &'static str {
        match self {
            FsDriver::Local => "local",
        }
    }
}

/// How guest file ownership and modes map to the host (`security_model=`; required by QEMU
/// for the `local` driver).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityModel {
    /// Like passthrough, but failures to set ownership are ignored (Kata's choice).
    None,
    /// Files are created with the guest's credentials (QEMU must run as root).
    Passthrough,
    /// Credentials are stored in extended attributes.
    MappedXattr,
    /// Credentials are stored in hidden `.virtfs_metadata` files.
    MappedFile,
}

impl SecurityModel {
    fn as_str(self) -> &'static str {
        match self {
            SecurityModel::None => "none",
            SecurityModel::Passthrough => "passthrough",
            SecurityModel::MappedXattr => "mapped-xattr",
            SecurityModel::MappedFile => "mapped-file",
        }
    }
}

/// What to do when the export spans several host filesystems (`multidevs=`), whose inode
/// numbers may collide in the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Multidevs {
    /// Remap inode numbers so they stay unique (Kata's base setting).
    Remap,
    /// Allow it, logging a warning (QEMU's default).
    Warn,
    /// Refuse access to files on other devices.
    Forbid,
}

impl Multidevs {
    fn as_str(self) -> &'static str {
        match self {
            Multidevs::Remap => "remap",
            Multidevs::Warn => "warn",
            Multidevs::Forbid => "forbid",
        }
    }
}

/// An `-fsdev` export of a host directory.
///
/// ```
/// use hvarch_devices::fs9p::{FsBackend, Multidevs};
/// use hvarch_devices::{fd::NoFds, part::Syntax};
/// let mut backend = FsBackend::new("fs0", "/srv/share,1");
/// backend.multidevs = Some(Multidevs::Remap);
/// assert_eq!(
///     backend.part().unwrap().to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-fsdev", "local,id=fs0,path=/srv/share,,1,security_model=none,multidevs=remap"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsBackend {
    /// The fsdev id (what the frontend's `fsdev=` names).
    pub id: String,
    /// The filesystem driver (default `local`).
    #[serde(default)]
    pub driver: FsDriver,
    /// The host directory to export.
    pub path: PathBuf,
    /// The credential mapping (`security_model=`).
    pub security_model: SecurityModel,
    /// Handling of exports spanning several host filesystems; `None` leaves QEMU's default
    /// (the arm64 backend omits it, as Kata's does).
    #[serde(default)]
    pub multidevs: Option<Multidevs>,
    /// Export read-only (`readonly=on`).
    #[serde(default)]
    pub readonly: bool,
}

impl FsBackend {
    /// A `local` export `id` of `path` with security model `none`.
    pub fn new(id: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        FsBackend {
            id: id.into(),
            driver: FsDriver::Local,
            path: path.into(),
            security_model: SecurityModel::None,
            multidevs: None,
            readonly: false,
        }
    }

    /// Checks the id and the path.
    pub fn validate(&self) -> Result<()> {
        const WHAT: &str = "fsdev";
        check_id(WHAT, "id", &self.id)?;
        path_str(WHAT, "path", &self.path)?;
        Ok(())
    }

    /// The `-fsdev` part (validated).
    pub fn part(&self) -> Result<Part<'_>> {
        self.validate()?;
        let props = Props::new()
            .with("fsdriver", self.driver.as_str())
            .with("id", self.id.as_str())
            .with("path", path_str("fsdev", "path", &self.path)?)
            .with("security_model", self.security_model.as_str())
            .opt("multidevs", self.multidevs.map(Multidevs::as_str))
            .flag("readonly", self.readonly);
        Ok(Part::new(PartKind::Fsdev, props))
    }
}

/// A virtio-9p share (`virtio-9p-pci` / `-ccw` / `-device`) of an [`FsBackend`], mounted in
/// the guest with `mount -t 9p <mount_tag>`.
///
/// ```
/// use hvarch_devices::fs9p::{FsBackend, FsDevice};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let share = FsDevice::new("fs0-dev", FsBackend::new("fs0", "/srv/share"), "share");
/// let args: Vec<String> = share.parts().unwrap().iter()
///     .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap()).collect();
/// assert_eq!(args, [
///     "-fsdev", "local,id=fs0,path=/srv/share,security_model=none",
///     "-device", "virtio-9p-pci,id=fs0-dev,fsdev=fs0,mount_tag=share",
/// ]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FsDevice {
    /// The device id.
    pub id: String,
    /// The export the device serves.
    pub backend: FsBackend,
    /// The tag the guest mounts (1 to [`MAX_MOUNT_TAG_LEN`] bytes).
    pub mount_tag: String,
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

impl FsDevice {
    /// A virtio-9p-pci share `id` of `backend`, tagged `mount_tag`.
    pub fn new(id: impl Into<String>, backend: FsBackend, mount_tag: impl Into<String>) -> Self {
        FsDevice {
            id: id.into(),
            backend,
            mount_tag: mount_tag.into(),
            bus: None,
            addr: None,
            virtio: VirtioOpts::default(),
        }
    }
}

impl QemuDevice for FsDevice {
    fn kind(&self) -> &'static str {
        "virtio-9p"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        self.backend.validate()?;
        if self.mount_tag.is_empty() {
            return Err(Error::MissingField {
                what,
                field: "mount_tag",
            });
        }
        if self.mount_tag.len() > MAX_MOUNT_TAG_LEN {
            return Err(invalid(
                what,
                "mount_tag",
                &self.mount_tag,
                format!(
                    "{} bytes; virtio-9p allows at most {MAX_MOUNT_TAG_LEN}",
                    self.mount_tag.len()
                ),
            ));
        }
        check_opt_id(what, "bus", self.bus.as_deref())?;
        self.virtio.validate_with_addr(what, self.addr)
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let device = Part::device(
            self.virtio.driver("virtio-9p"),
            Props::new()
                .with("id", self.id.as_str())
                .with("fsdev", self.backend.id.as_str())
                .with("mount_tag", self.mount_tag.as_str())
                .opt("bus", self.bus.as_deref())
                .opt("addr", self.addr)
                .extend(self.virtio.props()),
        );
        emit(self.backend.part()?)?;
        emit(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{
        args, bad_id, bad_path, id, nul_text, path, short_text, transport, Cases,
    };
    use crate::transport::Transport;
    use proptest::prelude::*;

    /// govmm's reference case (kata-go.md §2.3 FSDevice) in modern syntax. Deliberate
    /// differences: `-fsdev` comes first (backend before frontend); the device has an `id`
    /// (govmm gives none); `disable-modern=on` instead of `=true`; transport properties last.
    #[test]
    fn govmm_reference_case_in_modern_syntax() {
        let mut backend = FsBackend::new("workload9p", "/var/lib/docker/devicemapper/mnt/e31ebda2");
        backend.multidevs = Some(Multidevs::Remap);
        let mut share = FsDevice::new("workload9p-dev", backend, "rootfs");
        share.virtio.disable_modern = true;
        share.virtio.romfile = Some("efi-virtio.rom".into());
        assert_eq!(
            args(&share),
            [
                "-fsdev",
                "local,id=workload9p,path=/var/lib/docker/devicemapper/mnt/e31ebda2,\
                 security_model=none,multidevs=remap",
                "-device",
                "virtio-9p-pci,id=workload9p-dev,fsdev=workload9p,mount_tag=rootfs,\
                 disable-modern=on,romfile=efi-virtio.rom",
            ]
        );
    }

    /// The arm64 backend's 9p volume: no `multidevs`; CCW with devno; read-only export.
    #[test]
    fn arm64_ccw_and_readonly() {
        let mut backend = FsBackend::new("extra-9p-data", "/data");
        backend.readonly = true;
        backend.security_model = SecurityModel::MappedXattr;
        let mut share = FsDevice::new("fs1", backend, "data");
        share.virtio = VirtioOpts {
            devno: Some("fe.0.0002".into()),
            ..VirtioOpts::on(Transport::Ccw)
        };
        assert_eq!(
            args(&share),
            [
                "-fsdev",
                "local,id=extra-9p-data,path=/data,security_model=mapped-xattr,readonly=on",
                "-device",
                "virtio-9p-ccw,id=fs1,fsdev=extra-9p-data,mount_tag=data,devno=fe.0.0002",
            ]
        );
    }

    #[test]
    fn json_syntax_and_not_hotpluggable() {
        let share = FsDevice::new("fs0-dev", FsBackend::new("fs0", "/srv"), "share");
        let parts = share.parts().unwrap();
        // -fsdev has no JSON syntax: it stays in option syntax.
        assert_eq!(
            parts[0].render(Syntax::Json, &mut NoFds).unwrap(),
            "local,id=fs0,path=/srv,security_model=none"
        );
        assert_eq!(
            parts[1].render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"virtio-9p-pci","id":"fs0-dev","fsdev":"fs0","mount_tag":"share"}"#
        );
        let err = parts[0].qmp_add(&mut NoFds).unwrap_err();
        assert_eq!(
            err,
            Error::NotHotpluggable {
                what: "local".into(),
                option: "-fsdev"
            }
        );
        assert!(parts[0].qmp_del().is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let mut share = FsDevice::new("fs0-dev", FsBackend::new("fs0", "/srv"), "");
        assert_eq!(
            share.validate().unwrap_err(),
            Error::MissingField {
                what: "virtio-9p",
                field: "mount_tag"
            }
        );
        share.mount_tag = "t".repeat(31);
        share.validate().unwrap();
        share.mount_tag = "t".repeat(32);
        let msg = share.validate().unwrap_err().to_string();
        assert!(
            msg.contains("mount_tag") && msg.contains("32 bytes"),
            "{msg}"
        );
        share.mount_tag = "t".into();
        share.backend.path = PathBuf::new();
        assert_eq!(
            share.validate().unwrap_err().to_string(),
            "fsdev: `path` is required"
        );
        share.backend.path = "/srv".into();
        share.backend.id = "fs,0".into();
        assert!(share
            .parts()
            .unwrap_err()
            .to_string()
            .contains("invalid id"));
        share.backend.id = "fs0".into();
        share.addr = Some(PciAddr::slot_only(3).unwrap());
        share.virtio = VirtioOpts::on(Transport::Mmio);
        assert!(share.validate().unwrap_err().to_string().contains("addr"));
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = r#"
            id = "fs0-dev"
            mount_tag = "rootfs"
            addr = "04"
            [backend]
            id = "fs0"
            path = "/srv/share"
            security_model = "mapped-file"
            multidevs = "forbid"
            readonly = true
            [virtio]
            disable_modern = true
        "#;
        let share: FsDevice = toml::from_str(text).unwrap();
        assert_eq!(share.backend.driver, FsDriver::Local);
        assert_eq!(share.backend.multidevs, Some(Multidevs::Forbid));
        let again: FsDevice = toml::from_str(&toml::to_string(&share).unwrap()).unwrap();
        assert_eq!(again, share);
        assert!(toml::from_str::<FsDevice>(&format!("{text}\nbogus = 1")).is_err());
        let handle = text.replace("id = \"fs0\"", "id = \"fs0\"\ndriver = \"handle\"");
        assert!(toml::from_str::<FsDevice>(&handle).is_err());
        let device: crate::Device =
            toml::from_str(&format!("type = \"9p\"\n{}", text.trim_start())).unwrap();
        assert_eq!(device, crate::Device::from(share));
    }

    fn share() -> impl Strategy<Value = FsDevice> {
        let security = prop::sample::select(vec![
            SecurityModel::None,
            SecurityModel::Passthrough,
            SecurityModel::MappedXattr,
            SecurityModel::MappedFile,
        ]);
        let multidevs = proptest::option::of(prop::sample::select(vec![
            Multidevs::Remap,
            Multidevs::Warn,
            Multidevs::Forbid,
        ]));
        (
            (id(), id(), path(), short_text(MAX_MOUNT_TAG_LEN)),
            (
                proptest::option::of(id()),
                any::<bool>(),
                security,
                multidevs,
            ),
            transport(),
        )
            .prop_map(
                |(
                    (id, fsdev, path, tag),
                    (bus, readonly, security_model, multidevs),
                    (virtio, addr),
                )| {
                    let backend = FsBackend {
                        security_model,
                        multidevs,
                        readonly,
                        ..FsBackend::new(fsdev, path)
                    };
                    FsDevice {
                        bus,
                        addr,
                        virtio,
                        ..FsDevice::new(id, backend, tag)
                    }
                },
            )
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        Cases::new(share())
            .fault("id", bad_id(), |d, v| d.id = v)
            .fault("id", bad_id(), |d, v| d.backend.id = v)
            .fault("path", bad_path(), |d, v| d.backend.path = v)
            .fault("path", nul_text(), |d, v| d.backend.path = v.into())
            .fault("mount_tag", "|[a-z]{32,40}", |d, v| d.mount_tag = v)
            .fault("mount_tag", nul_text(), |d, v| d.mount_tag = v)
            .fault("bus", bad_id(), |d, v| d.bus = Some(v))
            .virtio_faults(|d| (&mut d.virtio, &mut d.addr))
            .check();
    }
}

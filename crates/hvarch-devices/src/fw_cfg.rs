//! Firmware configuration items ([`FwCfg`], `-fw_cfg`): named blobs the guest firmware or
//! kernel reads from QEMU's fw_cfg device (`/sys/firmware/qemu_fw_cfg/by_name/…` in Linux).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::{invalid, Error, Result};
use crate::part::{Part, PartKind};
use crate::props::Props;
use crate::transport::path_str;

/// What a [`FwCfg`] item holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum FwCfgContent {
    /// The contents of a host file (`file=`).
    File(PathBuf),
    /// A text string (`string=`; non-empty).
    String(String),
}

/// A fw_cfg item, `-fw_cfg name=…,file=…` or `-fw_cfg name=…,string=…`.
///
/// Each item renders on its own, so `n` items give exactly `n` options (govmm's builder
/// accumulated every item into every option: `n²` arguments, kata-go.md §2.7 bug 3).
/// Items exist from machine creation: command line only, no hot plug.
///
/// QEMU's limits: the name is at most 55 bytes; names outside `opt/` draw a warning (QEMU
/// recommends `opt/<your-domain>/…` for user items) but are accepted.
///
/// ```
/// use hvarch_devices::fw_cfg::{FwCfg, FwCfgContent};
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let item = FwCfg::new("opt/org.example/config", FwCfgContent::String("a=1,b=2".into()));
/// assert_eq!(
///     item.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-fw_cfg", "name=opt/org.example/config,string=a=1,,b=2"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FwCfg {
    /// The item's name, e.g. `opt/org.example/config` (1 to 55 bytes).
    pub name: String,
    /// Its contents.
    pub content: FwCfgContent,
}

impl FwCfg {
    /// The longest name QEMU accepts (`FW_CFG_MAX_FILE_PATH` minus the NUL).
    pub const MAX_NAME_LEN: usize = 55;

    /// An item `name` holding `content`.
    pub fn new(name: impl Into<String>, content: FwCfgContent) -> Self {
        FwCfg {
            name: name.into(),
            content,
        }
    }
}

impl QemuDevice for FwCfg {
    fn kind(&self) -> &'static str {
        "fw-cfg"
    }

    /// None: an item is not a device with an id; its name identifies it.
    fn id(&self) -> Option<&str> {
        None
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        if self.name.is_empty() {
            return Err(Error::MissingField {
                what,
                field: "name",
            });
        }
        if self.name.len() > FwCfg::MAX_NAME_LEN {
            return Err(invalid(
                what,
                "name",
                &self.name,
                format!("at most {} bytes", FwCfg::MAX_NAME_LEN),
            ));
        }
        if self.name.contains('\0') {
            return Err(invalid(what, "name", &self.name, "contains a NUL byte"));
        }
        match &self.content {
            FwCfgContent::File(path) => {
                path_str(what, "content.file", path)?;
            }
            FwCfgContent::String(text) => {
                if text.is_empty() {
                    return Err(Error::MissingField {
                        what,
                        field: "content.string",
                    });
                }
            }
        }
        Ok(())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        let props = Props::new().with("name", self.name.as_str());
        let props = match &self.content {
            FwCfgContent::File(path) => props.with("file", path_str(self.kind(), "file", path)?),
            FwCfgContent::String(text) => props.with("string", text.as_str()),
        };
        emit(Part::new(PartKind::FwCfg, props))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{args, bad_path, nul_text, path, short_text, text, Cases};
    use crate::Device;
    use proptest::prelude::*;

    /// govmm's two forms (kata-go.md §2.3 FwCfg), identical here.
    #[test]
    fn govmm_reference_cases() {
        assert_eq!(
            args(&FwCfg::new(
                "opt/com.mycompany/blob",
                FwCfgContent::File("./my_blob.bin".into())
            )),
            ["-fw_cfg", "name=opt/com.mycompany/blob,file=./my_blob.bin"]
        );
        assert_eq!(
            args(&FwCfg::new(
                "opt/com.mycompany/blob",
                FwCfgContent::String("foo".into())
            )),
            ["-fw_cfg", "name=opt/com.mycompany/blob,string=foo"]
        );
    }

    /// govmm rendered n items as n² arguments (kata-go.md §2.7 bug 3); here three items are
    /// exactly three options, each with its own name only.
    #[test]
    fn three_items_three_options() {
        let devices: Vec<Device> = ["a", "b", "c"]
            .iter()
            .map(|n| FwCfg::new(format!("opt/{n}"), FwCfgContent::String(n.to_string())).into())
            .collect();
        let args: Vec<String> = devices
            .iter()
            .flat_map(|d| d.parts().unwrap())
            .flat_map(|p| p.to_args(Syntax::Options, &mut NoFds).unwrap())
            .collect();
        assert_eq!(
            args,
            [
                "-fw_cfg",
                "name=opt/a,string=a",
                "-fw_cfg",
                "name=opt/b,string=b",
                "-fw_cfg",
                "name=opt/c,string=c"
            ]
        );
    }

    #[test]
    fn json_syntax_falls_back_and_no_hotplug() {
        let item = FwCfg::new("opt/x", FwCfgContent::File("/a,b".into()));
        let part = &item.parts().unwrap()[0];
        // -fw_cfg has no JSON syntax: the option form is kept.
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            "name=opt/x,file=/a,,b"
        );
        assert!(matches!(
            part.qmp_add(&mut NoFds).unwrap_err(),
            Error::NotHotpluggable {
                option: "-fw_cfg",
                ..
            }
        ));
        assert!(part.qmp_del().is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let long = format!("opt/{}", "a".repeat(52));
        assert!(FwCfg::new(&long[..55], FwCfgContent::String("1".into()))
            .validate()
            .is_ok());
        let err = FwCfg::new(long, FwCfgContent::String("1".into()))
            .validate()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`name`") && err.contains("55"), "{err}");
        assert_eq!(
            FwCfg::new("", FwCfgContent::String("1".into()))
                .validate()
                .unwrap_err()
                .to_string(),
            "fw-cfg: `name` is required"
        );
        assert_eq!(
            FwCfg::new("opt/x", FwCfgContent::String(String::new()))
                .parts()
                .unwrap_err()
                .to_string(),
            "fw-cfg: `content.string` is required"
        );
        assert_eq!(
            FwCfg::new("opt/x", FwCfgContent::File("".into()))
                .parts()
                .unwrap_err()
                .to_string(),
            "fw-cfg: `content.file` is required"
        );
    }

    #[test]
    fn toml_spec_round_trip() {
        let text = "name = \"opt/org.example/a\"\ncontent = { file = \"/etc/a.bin\" }";
        let item: FwCfg = toml::from_str(text).unwrap();
        assert_eq!(item.content, FwCfgContent::File("/etc/a.bin".into()));
        let again: FwCfg = toml::from_str(&toml::to_string(&item).unwrap()).unwrap();
        assert_eq!(again, item);
        let text = "name = \"opt/a\"\ncontent = { string = \"x\" }";
        assert!(toml::from_str::<FwCfg>(text).is_ok());
        assert!(toml::from_str::<FwCfg>("name = \"opt/a\"\nstr = \"x\"").is_err());
        let both = "name = \"opt/a\"\ncontent = { string = \"x\", file = \"/y\" }";
        assert!(toml::from_str::<FwCfg>(both).is_err());
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let content = prop_oneof![
            path().prop_map(FwCfgContent::File),
            text()
                .prop_filter("empty", |t| !t.is_empty())
                .prop_map(FwCfgContent::String),
        ];
        let item = (short_text(FwCfg::MAX_NAME_LEN), content)
            .prop_map(|(name, content)| FwCfg { name, content });
        Cases::new(item)
            .fault("name", "|[a-z/]{56,64}", |i, v| i.name = v)
            .fault("name", nul_text(), |i, v| i.name = v)
            .fault("content.file", bad_path(), |i, v| {
                i.content = FwCfgContent::File(v)
            })
            .fault("file", nul_text(), |i, v| {
                i.content = FwCfgContent::File(v.into())
            })
            .fault("content.string", Just(String::new()), |i, v| {
                i.content = FwCfgContent::String(v)
            })
            .fault("string", nul_text(), |i, v| {
                i.content = FwCfgContent::String(v)
            })
            .check();
    }
}

//! The generic loader ([`Loader`], `-device loader`): a file QEMU copies into guest memory at
//! reset (firmware for confidential guests, e.g. Kata's TDX setup).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::device::QemuDevice;
use crate::error::Result;
use crate::id::check_id;
use crate::part::Part;
use crate::props::Props;
use crate::transport::path_str;

/// A generic loader, `-device loader,id=…,file=…[,addr=…][,cpu-num=…][,force-raw=on]`.
///
/// QEMU loads the file (ELF, U-Boot image, or raw with `force-raw`) when the machine resets;
/// cold plug it. govmm (HEAD) had `LoaderDevice{File, ID}`, both required; so does this type.
///
/// ```
/// use hvarch_devices::loader::Loader;
/// use hvarch_devices::{fd::NoFds, part::Syntax, QemuDevice};
/// let loader = Loader::new("fd0", "/usr/share/td-shim,v1.bin");
/// assert_eq!(
///     loader.parts().unwrap()[0].to_args(Syntax::Options, &mut NoFds).unwrap(),
///     ["-device", "loader,id=fd0,file=/usr/share/td-shim,,v1.bin"],
/// );
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Loader {
    /// The device id.
    pub id: String,
    /// The file to load.
    pub file: PathBuf,
    /// The guest physical address to load at (`addr=`; for raw images, or to override an
    /// ELF's own address).
    #[serde(default)]
    pub addr: Option<u64>,
    /// The vCPU whose address space is used and whose PC is set to the entry point (`cpu-num=`).
    #[serde(default)]
    pub cpu_num: Option<u32>,
    /// Load the file as raw bytes even if it looks like an ELF or U-Boot image (`force-raw=on`).
    #[serde(default)]
    pub force_raw: bool,
}

impl Loader {
    /// A loader `id` for `file`, QEMU choosing the address from the image.
    pub fn new(id: impl Into<String>, file: impl Into<PathBuf>) -> Self {
        Loader {
            id: id.into(),
            file: file.into(),
            addr: None,
            cpu_num: None,
            force_raw: false,
        }
    }
}

impl QemuDevice for Loader {
    fn kind(&self) -> &'static str {
        "loader"
    }

    fn id(&self) -> Option<&str> {
        Some(&self.id)
    }

    fn validate(&self) -> Result<()> {
        let what = self.kind();
        check_id(what, "id", &self.id)?;
        path_str(what, "file", &self.file)?;
        Ok(())
    }

    fn for_each_part<'a>(&'a self, emit: &mut dyn FnMut(Part<'a>) -> Result<()>) -> Result<()> {
        self.validate()?;
        emit(Part::device(
            "loader",
            Props::new()
                .with("id", self.id.as_str())
                .with("file", path_str(self.kind(), "file", &self.file)?)
                .opt("addr", self.addr)
                .opt("cpu-num", self.cpu_num)
                .flag("force-raw", self.force_raw),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fd::NoFds;
    use crate::part::Syntax;
    use crate::test_support::{bad_id, bad_path, id, nul_text, path, Cases};
    use proptest::prelude::*;
    use serde_json::json;

    /// govmm HEAD `LoaderDevice`: `-device loader,file=<F>,id=<ID>`. Difference: `id` first,
    /// as on every hvarch device (QEMU does not care about the order).
    #[test]
    fn govmm_reference_case() {
        let loader = Loader::new("fd0", "/usr/share/td-shim.bin");
        assert_eq!(
            loader.parts().unwrap()[0]
                .to_args(Syntax::Options, &mut NoFds)
                .unwrap(),
            ["-device", "loader,id=fd0,file=/usr/share/td-shim.bin"]
        );
    }

    #[test]
    fn all_options_and_json() {
        let mut loader = Loader::new("l0", "/boot/fw.bin");
        loader.addr = Some(0x100_0000);
        loader.cpu_num = Some(0);
        loader.force_raw = true;
        let part = &loader.parts().unwrap()[0];
        assert_eq!(
            part.render(Syntax::Options, &mut NoFds).unwrap(),
            "loader,id=l0,file=/boot/fw.bin,addr=16777216,cpu-num=0,force-raw=on"
        );
        assert_eq!(
            part.qmp_add(&mut NoFds).unwrap().arguments,
            json!({"driver": "loader", "id": "l0", "file": "/boot/fw.bin",
                   "addr": 16777216u64, "cpu-num": 0, "force-raw": true})
        );
        assert_eq!(
            part.render(Syntax::Json, &mut NoFds).unwrap(),
            r#"{"driver":"loader","id":"l0","file":"/boot/fw.bin","addr":16777216,"cpu-num":0,"force-raw":true}"#
        );
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(
            Loader::new("l0", "").validate().unwrap_err().to_string(),
            "loader: `file` is required"
        );
        let err = Loader::new("", "/f").validate().unwrap_err().to_string();
        assert_eq!(err, "loader: `id` is required");
    }

    #[test]
    fn toml_spec_round_trip() {
        let loader: Loader =
            toml::from_str("id = \"fd0\"\nfile = \"/fw.bin\"\naddr = 4096\nforce_raw = true")
                .unwrap();
        assert_eq!(loader.addr, Some(4096));
        let again: Loader = toml::from_str(&toml::to_string(&loader).unwrap()).unwrap();
        assert_eq!(again, loader);
        assert!(toml::from_str::<Loader>("id = \"fd0\"\nfile = \"/f\"\ndata = 1").is_err());
    }

    #[test]
    fn parts_round_trip_and_faults_name_their_field() {
        let loader = (
            id(),
            path(),
            proptest::option::of(any::<u64>()),
            proptest::option::of(any::<u32>()),
            any::<bool>(),
        )
            .prop_map(|(id, file, addr, cpu_num, force_raw)| Loader {
                id,
                file,
                addr,
                cpu_num,
                force_raw,
            });
        Cases::new(loader)
            .fault("id", bad_id(), |l, v| l.id = v)
            .fault("file", bad_path(), |l, v| l.file = v)
            .fault("file", nul_text(), |l, v| l.file = v.into())
            .check();
    }
}

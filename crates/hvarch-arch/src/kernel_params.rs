//! Kata's kernel parameter sets: debug and non-debug, systemd, and the root device lines.

use hvarch_devices::kernel_params::KernelParams;

fn params(list: &[(&str, Option<&str>)]) -> KernelParams {
    let mut params = KernelParams::new();
    for (key, value) in list {
        // The sets below are constants, known to be valid; a failure here is a bug in them,
        // caught by this module's tests.
        let _ = params.push(key, *value);
    }
    params
}

/// Non-debug parameters: `quiet`.
pub fn non_debug() -> KernelParams {
    params(&[("quiet", None)])
}

/// Debug parameters: `debug`.
pub fn debug() -> KernelParams {
    params(&[("debug", None)])
}

/// systemd's non-debug parameters: `systemd.show_status=false`.
pub fn systemd_non_debug() -> KernelParams {
    params(&[("systemd.show_status", Some("false"))])
}

/// systemd's debug parameters: `systemd.show_status=true systemd.log_level=debug`.
pub fn systemd_debug() -> KernelParams {
    params(&[
        ("systemd.show_status", Some("true")),
        ("systemd.log_level", Some("debug")),
    ])
}

/// Where the root filesystem image is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootDevice {
    /// On an NVDIMM, mounted with DAX.
    NvdimmDax,
    /// On an NVDIMM, without DAX.
    Nvdimm,
    /// On virtio-blk.
    VirtioBlk,
}

/// The root parameters for an image on `device`, e.g. for NVDIMM with DAX:
/// `root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4`.
///
/// Kata writes `ro` inside the `rootflags` value string, which its command line then splits
/// off as a flag; here `ro` is its own parameter, which gives the same command line.
pub fn root(device: RootDevice) -> KernelParams {
    let (root, flags) = match device {
        RootDevice::NvdimmDax => ("/dev/pmem0p1", "dax,data=ordered,errors=remount-ro"),
        RootDevice::Nvdimm => ("/dev/pmem0p1", "data=ordered,errors=remount-ro"),
        RootDevice::VirtioBlk => ("/dev/vda1", "data=ordered,errors=remount-ro"),
    };
    params(&[
        ("root", Some(root)),
        ("rootflags", Some(flags)),
        ("ro", None),
        ("rootfstype", Some("ext4")),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_render_as_kata_writes_them() {
        assert_eq!(non_debug().to_string(), "quiet");
        assert_eq!(debug().to_string(), "debug");
        assert_eq!(systemd_non_debug().to_string(), "systemd.show_status=false");
        assert_eq!(
            systemd_debug().to_string(),
            "systemd.show_status=true systemd.log_level=debug"
        );
        assert_eq!(
            root(RootDevice::NvdimmDax).to_string(),
            "root=/dev/pmem0p1 rootflags=dax,data=ordered,errors=remount-ro ro rootfstype=ext4"
        );
        assert_eq!(
            root(RootDevice::Nvdimm).to_string(),
            "root=/dev/pmem0p1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
        );
        assert_eq!(
            root(RootDevice::VirtioBlk).to_string(),
            "root=/dev/vda1 rootflags=data=ordered,errors=remount-ro ro rootfstype=ext4"
        );
    }
}

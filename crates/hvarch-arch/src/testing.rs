//! Test support for the arch crates (not part of the API): sized image files that remove
//! themselves, and devices rendered to arguments.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A sparse file of a given size in its own temporary directory, removed (with the directory)
/// when dropped, also when the test holding it panics.
#[derive(Debug)]
pub struct TempImage {
    dir: PathBuf,
    path: PathBuf,
}

impl TempImage {
    /// A `size`-byte file named `name`, in a directory private to this image.
    ///
    /// Panics when the file cannot be made: this is for tests.
    pub fn new(name: &str, size: u64) -> TempImage {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("hvarch-image-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let path = dir.join(name);
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempImage { dir, path }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The command-line arguments of `devices`, in option syntax (descriptors as their numbers
/// in this process). Panics on a device that does not render: this is for tests.
pub fn argv(devices: &[hvarch_devices::Device]) -> Vec<String> {
    use hvarch_devices::QemuDevice;
    devices
        .iter()
        .flat_map(|d| d.parts().unwrap_or_else(|e| panic!("{}: {e}", d.kind())))
        .flat_map(|p| {
            p.to_args(
                hvarch_devices::part::Syntax::Options,
                &mut hvarch_devices::fd::NoFds,
            )
            .unwrap_or_else(|e| panic!("render {:?}: {e}", p.kind()))
        })
        .collect()
}

/// A tap endpoint `ifname` opened by name (no descriptors), MAC `02:00:ca:fe:00:01`.
pub fn tap(ifname: &str) -> crate::resources::NetEndpoint {
    crate::resources::NetEndpoint {
        kind: crate::resources::EndpointKind::Tuntap,
        interworking: crate::resources::InterworkingModel::TcFilter,
        ifname: ifname.into(),
        mac: "02:00:ca:fe:00:01".into(),
        vm_fds: Vec::new(),
        vhost_fds: Vec::new(),
    }
}

/// A raw, writable, shared block drive `id` on `/var/lib/disk.img`.
pub fn drive(id: &str) -> crate::resources::BlockDrive {
    crate::resources::BlockDrive {
        file: "/var/lib/disk.img".into(),
        format: "raw".into(),
        id: id.into(),
        read_only: false,
        share_rw: true,
        index: 0,
    }
}

/// A 9p volume `mount_tag` sharing `/srv`.
pub fn volume(mount_tag: &str) -> crate::resources::Volume {
    crate::resources::Volume {
        mount_tag: mount_tag.into(),
        host_path: "/srv".into(),
    }
}

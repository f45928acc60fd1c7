//! A real arm64 guest for demos and tests: Debian's cloud kernel, a busybox initramfs built
//! here in Rust, and a console protocol to talk to the guest's `/init`.
//!
//! - [`fetch`] downloads `linux-image-<version>-cloud-arm64` (6.12 from bookworm-backports:
//!   virtio-pci and virtio-console built in) and `busybox-static:arm64` with `apt-get
//!   download`, and extracts them with `dpkg -x` under `target/guest/` (cached, idempotent).
//!   [`find`] only looks, and fails with a message naming `cargo xtask setup`.
//! - [`initramfs`] writes a cpio (newc) archive compressed with gzip: busybox, the
//!   `virtio_blk` module (a module in Debian's cloud kernel) and the [`INIT`] script.
//! - [`guest_spec`] is the [`VmSpec`] that boots it under TCG the way Kata boots an arm64
//!   guest: `console=hvc0` on virtio-serial with a virtconsole socket, PCIe root ports for
//!   hotplug, and UEFI in two pflash images (code read-only, a per-VM copy of the variable
//!   store) so `pc-dimm` memory can be hot-plugged.
//! - [`Console`] connects to the console socket, collects the guest's lines with the time
//!   they arrived, and sends commands.
//!
//! The guest protocol (one line each way):
//!
//! | guest → host | meaning |
//! |---|---|
//! | `HVARCH-READY kernel=<release>` | `/init` is running and owns the console ([`READY_MARKER`]) |
//! | `HVARCH-STATE disks=<vda,…> mem_kb=<MemTotal>` | at start, on `state`, and whenever either changes |
//! | `HVARCH-BYE` | `poweroff` received; the guest powers off |
//! | `HVARCH-BYE power-button` | the power button was pressed (QMP `system_powerdown`); the guest powers off |
//! | `HVARCH-VIRTIOFS tag=<tag> mount=<rc> read=<word> write=<rc>` | the answer to `virtiofs <tag>` |
//!
//! | host → guest | effect |
//! |---|---|
//! | `state` | prints a `HVARCH-STATE` line |
//! | `poweroff` | `HVARCH-BYE`, then `poweroff -f` |
//! | `virtiofs <tag>` | mounts the virtio-fs share `<tag>` on `/mnt/<tag>`, reads the first word of its `from-host`, writes `guest <release>` to its `from-guest`, then answers `HVARCH-VIRTIOFS` ([`VirtiofsReport`]) |
//!
//! virtio-fs needs no module: Debian's 6.12 cloud kernel has FUSE and virtio-fs built in
//! (`CONFIG_FUSE_FS=y`, `CONFIG_VIRTIO_FS=y`; [`kernel_config`] reads them).

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hvarch::{Accelerator, GuestArch, LaunchOptions, Vm, VmSpec};

/// The package whose dependency names the cloud kernel to fetch.
pub const KERNEL_META_PACKAGE: &str = "linux-image-cloud-arm64:arm64";
/// The suite with the 6.12 kernel (virtio-pci and virtio-console built in).
pub const KERNEL_SUITE: &str = "bookworm-backports";
/// The statically linked busybox for arm64.
pub const BUSYBOX_PACKAGE: &str = "busybox-static:arm64";

/// The line `/init` prints once it owns the console.
pub const READY_MARKER: &str = "HVARCH-READY";
/// The prefix of the guest's state lines.
pub const STATE_PREFIX: &str = "HVARCH-STATE";
/// The line the guest prints before powering off.
pub const BYE_MARKER: &str = "HVARCH-BYE";

/// Environment variable naming another directory for the guest files (default
/// `<workspace>/target/guest`).
pub const GUEST_DIR_ENV: &str = "HVARCH_GUEST_DIR";

/// The guest's `/init`: mounts, waits for `hvc0`, loads `virtio_blk` and `evdev`, powers off
/// when the power button is pressed (a UEFI guest has ACPI's), prints the marker, then
/// watches its block devices and memory and obeys commands read from the console.
/// Everything in the loop is an ash builtin, so polling costs no fork under TCG.
pub const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
i=0
while [ ! -e /dev/hvc0 ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done
exec </dev/hvc0 >/dev/hvc0 2>&1
stty -echo 2>/dev/null
for m in /lib/modules/*.ko.xz; do
    [ -e "$m" ] || continue
    xzcat "$m" >/tmp/m.ko && insmod /tmp/m.ko
    rm -f /tmp/m.ko
done
# The power button (QMP system_powerdown): an ACPI button under UEFI, seen through evdev.
# No acpid: one blocking read of the first input event, then power off. The node is made
# from sysfs (registered with the device), not awaited from devtmpfs, and opened here,
# before the ready marker, so a press right after the marker is queued, never missed.
n=3
for e in /sys/class/input/event*; do
    [ -e "$e/dev" ] || continue
    read -r dev <"$e/dev"
    ev=/tmp/${e##*/}
    mknod "$ev" c "${dev%:*}" "${dev#*:}"
    eval "exec $n<$ev"
    (eval "dd of=/dev/null bs=24 count=1 <&$n" 2>/dev/null && echo "HVARCH-BYE power-button" && poweroff -f) &
    eval "exec $n<&-"
    n=$((n+1))
done
read -r release </proc/sys/kernel/osrelease
echo "HVARCH-READY kernel=$release"
look() {
    disks=""
    for d in /sys/block/vd*; do
        [ -e "$d" ] && disks="$disks,${d##*/}"
    done
    disks=${disks#,}
    while read -r key value unit; do
        [ "$key" = "MemTotal:" ] && mem=$value
    done </proc/meminfo
    state="disks=$disks mem_kb=$mem"
}
look
echo "HVARCH-STATE $state"
last=$state
# One queue of events for the loop: the console's lines and a tick every 0.1 s. The console
# is read by a reader of its own, never with a timeout: busybox's `read -t` drops what it has
# read of a line when its deadline passes between two bytes (a command lost its first
# letter under qemu-user). The tick sleeps in a `read -t` of a fifo nobody writes (a
# builtin: no fork per tick under TCG). Each event is one short line: atomic in a fifo.
mkfifo /tmp/events /tmp/never
exec 4<>/tmp/events 5<>/tmp/never
(while read -r line; do echo "line $line"; done) </dev/hvc0 >&4 &
(while :; do read -r -t 0.1 _ <&5; echo tick; done) >&4 &
while read -r kind cmd <&4; do
    if [ "$kind" = line ]; then
        case "$cmd" in
            state) look; echo "HVARCH-STATE $state"; last=$state ;;
            poweroff) echo "HVARCH-BYE"; sync; poweroff -f ;;
            virtiofs\ *)
                tag=${cmd#virtiofs }
                mkdir -p "/mnt/$tag"
                mount -t virtiofs "$tag" "/mnt/$tag"; m=$?
                got=
                [ -e "/mnt/$tag/from-host" ] && read -r got _ <"/mnt/$tag/from-host"
                echo "guest $release" >"/mnt/$tag/from-guest"; w=$?
                sync
                echo "HVARCH-VIRTIOFS tag=$tag mount=$m read=$got write=$w" ;;
            "") ;;
            *) echo "HVARCH-UNKNOWN $cmd" ;;
        esac
    fi
    look
    if [ "$state" != "$last" ]; then
        echo "HVARCH-STATE $state"
        last=$state
    fi
done
"#;

/// The modules `/init` loads, in order, relative to `lib/modules/<release>/kernel`:
/// virtio-blk and evdev (the power button's events) are modules in Debian's cloud kernel
/// (virtio-pci, virtio-console and the ACPI button are built in).
pub const MODULES: &[&str] = &[
    "drivers/block/virtio_blk.ko.xz",
    "drivers/input/evdev.ko.xz",
];

/// The files a guest is made of, as extracted under the guest directory.
#[derive(Clone, Debug)]
pub struct GuestFiles {
    /// The directory everything lives in.
    pub dir: PathBuf,
    /// The kernel (`vmlinuz-*`: an arm64 `Image` with an EFI stub; `-kernel` takes it).
    pub kernel: PathBuf,
    /// The kernel release, e.g. `6.12.95+deb12-cloud-arm64`.
    pub release: String,
    /// The static busybox.
    pub busybox: PathBuf,
    /// Modules `/init` loads in order (xz-compressed, as Debian ships them).
    pub modules: Vec<PathBuf>,
}

/// The guest directory: `$HVARCH_GUEST_DIR`, else `<workspace>/target/guest`.
pub fn guest_dir() -> PathBuf {
    crate::target_dir_or_env(GUEST_DIR_ENV, "guest")
}

/// The guest files already under `dir` (see [`fetch`]); the error says what is missing and
/// that `cargo xtask setup` fetches it.
pub fn find(dir: &Path) -> Result<GuestFiles, String> {
    let root = dir.join("root");
    let missing = |what: &str| {
        format!(
            "the arm64 guest's {what} is missing under {}: run `cargo xtask setup` (it fetches \
             Debian's cloud kernel and busybox-static with apt-get download)",
            root.display()
        )
    };
    let boot = root.join("boot");
    let kernel = std::fs::read_dir(&boot)
        .ok()
        .and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("vmlinuz-"))
                })
                .max()
        })
        .ok_or_else(|| missing("kernel (boot/vmlinuz-*)"))?;
    let release = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_owned();
    let busybox = root.join("bin/busybox");
    if !busybox.exists() {
        return Err(missing("busybox (bin/busybox)"));
    }
    let module_dir = root.join("lib/modules").join(&release).join("kernel");
    let mut modules = Vec::new();
    for name in MODULES {
        let path = module_dir.join(name);
        if !path.exists() {
            return Err(missing(&format!("module {name}")));
        }
        modules.push(path);
    }
    Ok(GuestFiles {
        dir: dir.to_path_buf(),
        kernel,
        release,
        busybox,
        modules,
    })
}

/// Fetches (once) and returns the guest files under `dir`: Debian's arm64 cloud kernel from
/// bookworm-backports and `busybox-static:arm64`, with `apt-get download` and `dpkg -x`.
/// Needs the arm64 architecture and bookworm-backports enabled (`cargo xtask setup` does
/// both). Idempotent: when [`find`] succeeds nothing is downloaded.
pub fn fetch(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<GuestFiles, String> {
    if let Ok(files) = find(dir) {
        return Ok(files);
    }
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("create {}: {e}", debs.display()))?;
    let kernel_package = kernel_package()?;
    progress(&format!(
        "fetching {kernel_package} and {BUSYBOX_PACKAGE} (apt-get download)"
    ));
    let download = || {
        run(Command::new("apt-get")
            .args(["download", "-q"])
            .arg(&kernel_package)
            .arg(BUSYBOX_PACKAGE)
            .current_dir(&debs))
    };
    download()
        .or_else(|first| {
            // Stale package lists name files the archive no longer has: refresh once.
            progress(&format!(
                "apt-get download failed ({first}); apt-get update and retry"
            ));
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            download()
        })
        .map_err(|e| {
            format!(
                "{e} (are the arm64 architecture and {KERNEL_SUITE} enabled? `cargo xtask setup`)"
            )
        })?;
    let root = dir.join("root");
    std::fs::create_dir_all(&root).map_err(|e| format!("create {}: {e}", root.display()))?;
    let entries = std::fs::read_dir(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let mut extracted = 0;
    for deb in entries.flatten().map(|e| e.path()) {
        let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !name.ends_with(".deb") {
            continue;
        }
        progress(&format!("extracting {name} (dpkg -x)"));
        run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
        extracted += 1;
    }
    if extracted == 0 {
        return Err(format!(
            "apt-get download left no .deb in {}",
            debs.display()
        ));
    }
    find(dir)
}

/// The versioned cloud kernel package the backports meta package depends on, e.g.
/// `linux-image-6.12.95+deb12-cloud-arm64:arm64`.
fn kernel_package() -> Result<String, String> {
    let out = Command::new("apt-cache")
        .args(["show", "--no-all-versions"])
        .arg(format!("{KERNEL_META_PACKAGE}/{KERNEL_SUITE}"))
        .output()
        .map_err(|e| format!("cannot run apt-cache: {e} (a Debian host is needed)"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let depends = text
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .ok_or_else(|| {
            format!(
                "apt-cache knows no {KERNEL_META_PACKAGE} in {KERNEL_SUITE}: run `cargo xtask \
                 setup` (it enables arm64 and {KERNEL_SUITE}) {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })?;
    let name = depends
        .split(',')
        .map(str::trim)
        .find_map(|d| {
            d.split_whitespace()
                .next()
                .filter(|n| n.starts_with("linux-image-"))
        })
        .ok_or_else(|| format!("no linux-image dependency in `Depends:{depends}`"))?;
    let name = name.split(':').next().unwrap_or(name);
    Ok(format!("{name}:arm64"))
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A cpio archive in the "newc" format the kernel unpacks as an initramfs.
#[derive(Debug, Default)]
pub struct Cpio {
    bytes: Vec<u8>,
    ino: u32,
}

impl Cpio {
    /// An empty archive.
    pub fn new() -> Cpio {
        Cpio::default()
    }

    fn entry(&mut self, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let name = name.trim_start_matches('/');
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            if mode & 0o040000 != 0 { 2 } else { 1 },
            0, // mtime: reproducible archives
            data.len() as u32,
            0, // dev major
            0, // dev minor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        self.bytes.extend_from_slice(b"070701");
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08x}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.bytes.len() & 3 != 0 {
            self.bytes.push(0);
        }
    }

    /// Adds a directory (mode 0755).
    pub fn dir(&mut self, name: &str) -> &mut Cpio {
        self.entry(name, 0o040755, (0, 0), &[]);
        self
    }

    /// Adds a regular file with permission bits `perm`.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> &mut Cpio {
        self.entry(name, 0o100000 | (perm & 0o7777), (0, 0), data);
        self
    }

    /// Adds a character device node.
    pub fn char_dev(&mut self, name: &str, major: u32, minor: u32) -> &mut Cpio {
        self.entry(name, 0o020600, (major, minor), &[]);
        self
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Cpio {
        self.entry(name, 0o120777, (0, 0), target.as_bytes());
        self
    }

    /// The archive with its `TRAILER!!!` entry.
    pub fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, (0, 0), &[]);
        self.bytes
    }
}

/// Builds (once per content) the gzip-compressed initramfs of `files` with [`INIT`] and
/// returns its path, `<dir>/initramfs-<hash>.cpio.gz`. Written to a temporary name and
/// renamed, so concurrent callers never see a partial file.
pub fn initramfs(files: &GuestFiles) -> Result<PathBuf, String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("read {}: {e}", p.display()));
    let busybox = read(&files.busybox)?;
    let modules: Vec<(String, Vec<u8>)> = files
        .modules
        .iter()
        .enumerate()
        .map(|(i, path)| {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("m");
            Ok((format!("lib/modules/{i:02}-{name}"), read(path)?))
        })
        .collect::<Result<_, String>>()?;
    let mut hasher = DefaultHasher::new();
    INIT.hash(&mut hasher);
    busybox.hash(&mut hasher);
    modules.hash(&mut hasher);
    let path = files
        .dir
        .join(format!("initramfs-{:016x}.cpio.gz", hasher.finish()));
    if path.exists() {
        return Ok(path);
    }
    let mut cpio = Cpio::new();
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "lib",
        "lib/modules",
        "mnt",
    ] {
        cpio.dir(dir);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("bin/busybox", 0o755, &busybox);
    cpio.symlink("bin/sh", "busybox");
    for (name, data) in &modules {
        cpio.file(name, 0o644, data);
    }
    cpio.file("init", 0o755, INIT.as_bytes());
    let archive = cpio.finish();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&archive)
        .and_then(|()| gz.finish())
        .and_then(|bytes| {
            static WRITER: AtomicU32 = AtomicU32::new(0);
            let writer = WRITER.fetch_add(1, Ordering::Relaxed);
            let tmp = path.with_extension(format!("tmp{}-{writer}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, &path)
        })
        .map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// The UEFI firmware code (package qemu-efi-aarch64).
pub const AAVMF_CODE: &str = crate::spec::AAVMF_CODE;
/// The UEFI variable store template.
pub const AAVMF_VARS: &str = crate::spec::AAVMF_VARS;

/// How to boot the guest.
#[derive(Clone, Debug)]
pub struct GuestOptions {
    /// The sandbox id.
    pub id: String,
    /// The runtime directory (sockets); the per-VM UEFI variable store goes here too.
    pub dir: PathBuf,
    /// Boot memory in MiB.
    pub memory_mb: u64,
    /// Boot through UEFI (pflash), which gives the guest ACPI, needed for `pc-dimm` hotplug.
    pub uefi: bool,
    /// PCIe root ports to cold-plug (each takes one hot-plugged PCIe device).
    pub root_ports: u32,
}

impl GuestOptions {
    /// 512 MiB, UEFI, two root ports, in `dir`.
    pub fn new(id: &str, dir: &Path) -> GuestOptions {
        GuestOptions {
            id: id.to_owned(),
            dir: dir.to_path_buf(),
            memory_mb: 512,
            uefi: true,
            root_ports: 2,
        }
    }
}

/// Kernel parameters added after Kata's arm64 ones (`console=hvc0 console=hvc1
/// iommu.passthrough=0`): hot-added memory comes online at once, so `MemTotal` shows it.
pub const EXTRA_KERNEL_PARAMS: &str = "memhp_default_state=online";

/// The spec that boots `kernel` + `initramfs` under TCG (see the module docs). Copies the
/// UEFI variable store into `options.dir` when `options.uefi`.
pub fn guest_spec(
    files: &GuestFiles,
    initramfs: &Path,
    options: &GuestOptions,
) -> Result<VmSpec, String> {
    let mut spec = VmSpec::new(options.id.clone());
    spec.arch = Some(GuestArch::Aarch64);
    spec.runtime_dir = Some(options.dir.join("run"));
    spec.host_memory_mb = Some(options.memory_mb + 2048);
    spec.host_cpus = Some(1);
    spec.stopped = true;
    let h = &mut spec.hypervisor;
    h.accelerator = Accelerator::Tcg;
    h.kernel_path = Some(files.kernel.clone());
    h.initrd_path = Some(initramfs.to_path_buf());
    h.memory_mb = options.memory_mb;
    h.memory_slots = 4;
    h.default_bridges = 0;
    h.pcie_root_ports = options.root_ports;
    h.block_device_driver = hvarch::hvarch_arch::settings::BlockDriver::VirtioBlk;
    h.shared_fs = hvarch::hvarch_arch::settings::SharedFs::None;
    h.enable_swap = true;
    // TCG: the `max` CPU's architected pointer authentication (QARMA) is slow to emulate.
    h.cpu_features = vec!["pauth-impdef=on".into()];
    h.kernel_params = EXTRA_KERNEL_PARAMS
        .parse()
        .map_err(|e| format!("kernel params: {e}"))?;
    if options.uefi {
        for firmware in [AAVMF_CODE, AAVMF_VARS] {
            if !Path::new(firmware).exists() {
                return Err(format!(
                    "{firmware} is missing: install qemu-efi-aarch64 (`cargo xtask setup`)"
                ));
            }
        }
        std::fs::create_dir_all(&options.dir)
            .map_err(|e| format!("create {}: {e}", options.dir.display()))?;
        let vars = options.dir.join("AAVMF_VARS.fd");
        std::fs::copy(AAVMF_VARS, &vars)
            .map_err(|e| format!("copy {AAVMF_VARS} to {}: {e}", vars.display()))?;
        h.pflashes = vec![PathBuf::from(AAVMF_CODE), vars];
    }
    Ok(spec)
}

/// Boots the test guest (fetched by `cargo xtask setup`) as `options` say: launched paused,
/// its console connected before the vCPUs start (no line is missed), then resumed until
/// `/init` prints its ready marker, within `timeout`. A failure says which step failed, with
/// QEMU's stderr once it runs; the VM is stopped and cleaned up then.
pub fn boot(options: &GuestOptions, timeout: Duration) -> Result<(Vm, Console), String> {
    let files = find(&guest_dir())?;
    let image = initramfs(&files)?;
    let spec = guest_spec(&files, &image, options)?;
    let assembled = hvarch::assemble(&spec).map_err(|e| format!("assemble: {e}"))?;
    let vm = Vm::launch(assembled, LaunchOptions::default()).map_err(|e| format!("launch: {e}"))?;
    let console = Console::connect(&vm.paths().console, None)?;
    vm.resume().map_err(|e| format!("cont: {e}"))?;
    console
        .wait_for("the ready marker", timeout, |l| l.starts_with(READY_MARKER))
        .map_err(|e| format!("{e}\n--- QEMU stderr ---\n{}", vm.stderr()))?;
    Ok((vm, console))
}

/// The prefix of the guest's answer to `virtiofs <tag>`.
pub const VIRTIOFS_PREFIX: &str = "HVARCH-VIRTIOFS";

/// The guest's answer to `virtiofs <tag>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtiofsReport {
    /// The share's tag.
    pub tag: String,
    /// `mount -t virtiofs`'s exit status (0: mounted).
    pub mount: i32,
    /// The first word of the share's `from-host` (empty if it could not be read).
    pub read: String,
    /// The exit status of writing `from-guest` (0: written).
    pub write: i32,
}

impl VirtiofsReport {
    /// Parses `HVARCH-VIRTIOFS tag=<tag> mount=<rc> read=<word> write=<rc>`.
    pub fn parse(line: &str) -> Option<VirtiofsReport> {
        let rest = line.trim().strip_prefix(VIRTIOFS_PREFIX)?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        };
        Some(VirtiofsReport {
            tag: field("tag")?.to_owned(),
            mount: field("mount")?.parse().ok()?,
            read: field("read").unwrap_or_default().to_owned(),
            write: field("write")?.parse().ok()?,
        })
    }
}

/// The value of `option` (e.g. `CONFIG_VIRTIO_FS`: `y`, `m`) in the guest kernel's
/// `boot/config-<release>`; `None` when unset or unreadable.
pub fn kernel_config(files: &GuestFiles, option: &str) -> Option<String> {
    let config = files
        .dir
        .join("root/boot")
        .join(format!("config-{}", files.release));
    let text = std::fs::read_to_string(config).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(option)?.strip_prefix('='))
        .map(str::to_owned)
}

/// One line the guest printed, and when it arrived.
#[derive(Clone, Debug)]
pub struct ConsoleLine {
    /// The line, without `\r\n`.
    pub text: String,
    /// When the host read it.
    pub at: Instant,
}

/// A callback that sees each console line as it arrives.
pub type Echo = Box<dyn FnMut(&str) + Send>;

/// The host end of the guest's console (the virtconsole socket QEMU listens on).
#[derive(Debug)]
pub struct Console {
    writer: UnixStream,
    lines: Receiver<ConsoleLine>,
    transcript: Arc<Mutex<Vec<ConsoleLine>>>,
}

impl Console {
    /// Connects to `socket`. Every line is kept in the transcript and, when `echo` is given,
    /// passed to it as it arrives (e.g. to print the guest's console).
    pub fn connect(socket: &Path, echo: Option<Echo>) -> Result<Console, String> {
        let stream = UnixStream::connect(socket)
            .map_err(|e| format!("connect to the console {}: {e}", socket.display()))?;
        let reader = stream
            .try_clone()
            .map_err(|e| format!("clone console stream: {e}"))?;
        let (tx, rx) = mpsc::channel();
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&transcript);
        let mut echo = echo;
        std::thread::Builder::new()
            .name("guest-console".into())
            .spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut raw = Vec::new();
                loop {
                    raw.clear();
                    match reader.read_until(b'\n', &mut raw) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                    let text = String::from_utf8_lossy(&raw)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    let line = ConsoleLine {
                        text,
                        at: Instant::now(),
                    };
                    if let Some(echo) = echo.as_mut() {
                        echo(&line.text);
                    }
                    if let Ok(mut all) = kept.lock() {
                        all.push(line.clone());
                    }
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("spawn console reader: {e}"))?;
        Ok(Console {
            writer: stream,
            lines: rx,
            transcript,
        })
    }

    /// Sends `line` (a newline is added).
    pub fn send(&self, line: &str) -> Result<(), String> {
        (&self.writer)
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("write to the console: {e}"))
    }

    /// Waits up to `timeout` for a line for which `wanted` holds, skipping others.
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<ConsoleLine, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if wanted(&line.text) => return Ok(line),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "no {what} on the guest console within {timeout:?}; it printed:\n{}",
                        self.transcript_text()
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(format!(
                        "the console closed before {what}; the guest printed:\n{}",
                        self.transcript_text()
                    ))
                }
            }
        }
    }

    /// Waits for the next `HVARCH-STATE` line that satisfies `wanted`.
    pub fn wait_state(
        &self,
        what: &str,
        timeout: Duration,
        wanted: impl Fn(&GuestState) -> bool,
    ) -> Result<(GuestState, Instant), String> {
        let line = self.wait_for(what, timeout, |text| {
            GuestState::parse(text).is_some_and(|s| wanted(&s))
        })?;
        let state = GuestState::parse(&line.text).ok_or("unparsable state line")?;
        Ok((state, line.at))
    }

    /// Everything the guest printed so far, one line each.
    pub fn transcript_text(&self) -> String {
        self.transcript
            .lock()
            .map(|all| {
                all.iter()
                    .map(|l| l.text.as_str())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }
}

/// What the guest reported in a `HVARCH-STATE` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestState {
    /// Block devices (`vda`, …).
    pub disks: Vec<String>,
    /// `MemTotal` in KiB.
    pub mem_kb: u64,
}

impl GuestState {
    /// Parses `HVARCH-STATE disks=vda,vdb mem_kb=123`.
    pub fn parse(line: &str) -> Option<GuestState> {
        let rest = line.trim().strip_prefix(STATE_PREFIX)?;
        let mut disks = None;
        let mut mem_kb = None;
        for word in rest.split_whitespace() {
            if let Some(list) = word.strip_prefix("disks=") {
                disks = Some(
                    list.split(',')
                        .filter(|d| !d.is_empty())
                        .map(str::to_owned)
                        .collect(),
                );
            } else if let Some(kb) = word.strip_prefix("mem_kb=") {
                mem_kb = kb.parse().ok();
            }
        }
        Some(GuestState {
            disks: disks.unwrap_or_default(),
            mem_kb: mem_kb?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_newc_layout() {
        let mut cpio = Cpio::new();
        cpio.dir("bin").file("init", 0o755, b"hi");
        let bytes = cpio.finish();
        assert_eq!(&bytes[..6], b"070701");
        assert_eq!(bytes.len() % 4, 0);
        // Header 110 bytes + "bin\0" (4) = 114, padded to 116.
        assert_eq!(&bytes[110..114], b"bin\0");
        assert_eq!(&bytes[116..122], b"070701");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("init\0"));
        assert!(text.contains("TRAILER!!!"));
        // The file's mode (0100755) and size (2) fields.
        let second = &text[116..];
        assert_eq!(&second[14..22], "000081ed");
        assert_eq!(&second[54..62], "00000002");
    }

    #[test]
    fn state_lines() {
        assert_eq!(
            GuestState::parse("HVARCH-STATE disks=vda,vdb mem_kb=1024"),
            Some(GuestState {
                disks: vec!["vda".into(), "vdb".into()],
                mem_kb: 1024
            })
        );
        assert_eq!(
            GuestState::parse("HVARCH-STATE disks= mem_kb=7"),
            Some(GuestState {
                disks: vec![],
                mem_kb: 7
            })
        );
        assert_eq!(GuestState::parse("hello"), None);
    }

    #[test]
    fn virtiofs_reports() {
        assert_eq!(
            VirtiofsReport::parse("HVARCH-VIRTIOFS tag=kataShared mount=0 read=hello write=0"),
            Some(VirtiofsReport {
                tag: "kataShared".into(),
                mount: 0,
                read: "hello".into(),
                write: 0,
            })
        );
        assert_eq!(
            VirtiofsReport::parse("HVARCH-VIRTIOFS tag=t mount=255 read= write=1"),
            Some(VirtiofsReport {
                tag: "t".into(),
                mount: 255,
                read: String::new(),
                write: 1,
            })
        );
        assert_eq!(VirtiofsReport::parse("HVARCH-VIRTIOFS tag=t"), None);
        assert_eq!(VirtiofsReport::parse("HVARCH-STATE disks= mem_kb=1"), None);
    }
}

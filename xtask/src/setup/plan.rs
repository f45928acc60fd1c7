//! The pure planner: a machine's state in, the ordered steps that make it ready out.
//!
//! Nothing here touches the machine, so every state a newcomer's machine can be in is a unit
//! test (see the tests at the bottom). The rules:
//!
//! 1. Only what a profile still lacks is installed; a profile that lacks nothing plans nothing.
//! 2. A suite or a package architecture is added only when something still to be installed
//!    needs it.
//! 3. `apt-get update` runs after the last suite or architecture change and before the first
//!    step that reads the package lists, and also when a package list those steps need was
//!    never fetched (an architecture added by hand without an update).
//! 4. QEMU comes from bookworm-backports: a QEMU older than [`MIN_QEMU_MAJOR`] (bookworm's own
//!    7.2) counts as missing and is upgraded from there.
//! 5. A partial guest download is removed before the guest is fetched again.
//! 6. Debian's Rust toolchain comes from bookworm itself (`-t bookworm`, pinned to bookworm's
//!    version once the lists say which it is): bookworm's LTS security suite builds newer
//!    `rustc-web` for some architectures only (not s390x), and the standard library of every
//!    cross target must be the compiler's exact version.
//! 7. The cross targets' standard libraries are not installed with dpkg (a foreign
//!    architecture's `libstd-rust-web-dev` drags in LLVM and dozens of libraries that must match
//!    the host's versions exactly, which the LTS suites cannot always offer): setup downloads
//!    each one and extracts it into a sysroot under `target/cross/`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;

use super::state::{GuestFiles, MachineState, Os};

/// The suite QEMU 10 and the 6.12 guest kernel come from.
pub const BACKPORTS: &str = "bookworm-backports";
/// Debian's own suite.
pub const BOOKWORM: &str = "bookworm";
/// The oldest QEMU the tests target.
pub const MIN_QEMU_MAJOR: u32 = 10;
/// Where `cargo xtask setup` writes the bookworm-backports source.
pub const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/hvarch-bookworm-backports.sources";
/// The Debian archive used when the machine names none.
pub const DEFAULT_DEBIAN_URI: &str = "http://deb.debian.org/debian";
/// The virtio-fs daemon the Kata-configuration tests start (no bookworm package has it).
pub const VIRTIOFSD: Tool = Tool {
    name: "virtiofsd",
    version: "1.14.0",
};

/// What a machine is being prepared for. `Demo` ⊂ `Ci`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// `cargo xtask demo`: QEMU for arm64 guests, UEFI firmware and the arm64 guest files.
    Demo,
    /// `cargo xtask ci`: the demo's needs, every QEMU the tests start, qemu-user, the cross
    /// toolchains for aarch64, ppc64le and s390x, and virtiofsd.
    Ci,
}

/// A Debian package a profile needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Package {
    /// The name, with `:<arch>` for a foreign architecture's package.
    pub name: &'static str,
    /// Taken from bookworm-backports (`-t bookworm-backports`) instead of bookworm.
    pub backports: bool,
    /// The least upstream major version that counts as installed.
    pub min_major: Option<u32>,
}

impl Package {
    const fn main(name: &'static str) -> Package {
        Package {
            name,
            backports: false,
            min_major: None,
        }
    }

    const fn qemu(name: &'static str) -> Package {
        Package {
            name,
            backports: true,
            min_major: Some(MIN_QEMU_MAJOR),
        }
    }

    /// The package's architecture, if it names a foreign one (`libfoo:arm64` → `arm64`).
    pub fn arch(&self) -> Option<&'static str> {
        self.name.split_once(':').map(|(_, arch)| arch)
    }

    fn suite(&self) -> &'static str {
        if self.backports {
            BACKPORTS
        } else {
            BOOKWORM
        }
    }
}

/// A tool installed with `cargo install --locked --debug --root target/tools`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tool {
    /// The crate (and binary) name.
    pub name: &'static str,
    /// The exact version.
    pub version: &'static str,
}

/// Packages of the demo profile.
const DEMO_PACKAGES: &[Package] = &[
    Package::qemu("qemu-system-arm"),
    Package::main("qemu-efi-aarch64"),
];

/// Packages the ci profile adds to the demo's.
const CI_PACKAGES: &[Package] = &[
    Package::qemu("qemu-system-x86"),
    Package::qemu("qemu-system-ppc"),
    Package::qemu("qemu-system-s390x"),
    Package::qemu("qemu-user"),
    // virtio-net-pci's option ROM (qemu-system-x86 recommends it; recommends are not installed).
    Package::main("ipxe-qemu"),
    Package::main("gcc-aarch64-linux-gnu"),
    Package::main("libc6-dev-arm64-cross"),
    Package::main("gcc-powerpc64le-linux-gnu"),
    Package::main("libc6-dev-ppc64el-cross"),
    Package::main("gcc-s390x-linux-gnu"),
    Package::main("libc6-dev-s390x-cross"),
    // What `cargo install virtiofsd` links against.
    Package::main("libcap-ng-dev"),
    Package::main("libseccomp-dev"),
    Package::main("pkg-config"),
];

/// The guest files are arm64 packages; the 6.12 kernel is in bookworm-backports.
const GUEST_ARCH: &str = "arm64";

/// Debian's Rust toolchain (`/usr/bin/rustc`, `cargo`, `cargo-clippy`), all of one version.
pub const RUST_TOOLCHAIN: &[&str] = &["rustc-web", "cargo-web", "rust-web-clippy"];

/// The package whose version the cross standard libraries must have.
pub const RUSTC: &str = "rustc-web";

/// The Debian package with a target's Rust standard library.
pub const CROSS_STD_PACKAGE: &str = "libstd-rust-web-dev";

/// A cross target of the ci profile: its Debian architecture and Rust target triple.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CrossTarget {
    /// The Debian architecture, e.g. `s390x`.
    pub arch: &'static str,
    /// The Rust target, e.g. `s390x-unknown-linux-gnu`.
    pub triple: &'static str,
}

/// The cross targets whose tests run under qemu-user.
pub const CROSS_TARGETS: &[CrossTarget] = &[
    CrossTarget {
        arch: "arm64",
        triple: "aarch64-unknown-linux-gnu",
    },
    CrossTarget {
        arch: "ppc64el",
        triple: "powerpc64le-unknown-linux-gnu",
    },
    CrossTarget {
        arch: "s390x",
        triple: "s390x-unknown-linux-gnu",
    },
];

/// What a profile needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirements {
    /// Debian packages.
    pub packages: Vec<Package>,
    /// Whether the arm64 guest's kernel and busybox must be fetched.
    pub guest: bool,
    /// Whether Debian's Rust toolchain and the cross targets' standard libraries are needed.
    pub cross: bool,
    /// Tools built with `cargo install`.
    pub tools: Vec<Tool>,
}

impl Requirements {
    /// What `profile` needs.
    pub fn of(profile: Profile) -> Requirements {
        let mut packages = DEMO_PACKAGES.to_vec();
        let mut tools = Vec::new();
        let ci = profile == Profile::Ci;
        if ci {
            packages.extend_from_slice(CI_PACKAGES);
            tools.push(VIRTIOFSD);
        }
        Requirements {
            packages,
            guest: true,
            cross: ci,
            tools,
        }
    }
}

/// One thing setup does to the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write a deb822 source for `suite` from `uri` to `file`.
    AddSuite {
        /// The suite.
        suite: &'static str,
        /// The archive URI (the machine's own Debian mirror).
        uri: String,
        /// The sources file written.
        file: PathBuf,
    },
    /// `dpkg --add-architecture <arch>`.
    AddArchitecture(String),
    /// `apt-get update`.
    AptUpdate {
        /// Why (what changed or is missing).
        reason: String,
        /// The (suite, architecture) package lists the later steps read: the update has
        /// worked when they are there, even if an index nobody needs failed to download (a
        /// mirror in the middle of a sync).
        lists: Vec<(String, String)>,
    },
    /// `apt-get install` of `packages`.
    AptInstall {
        /// The packages (`name` or `name=version`).
        packages: Vec<String>,
        /// The suite given with `-t` (preferred over every other).
        release: Option<&'static str>,
        /// `--allow-downgrades` (the Rust toolchain back to bookworm's version).
        allow_downgrades: bool,
    },
    /// Download the cross target's standard library of the installed `rustc-web`'s version
    /// and extract it into a sysroot under `dir`.
    FetchCrossStd {
        /// The target.
        target: CrossTarget,
        /// Where its sysroot goes (`target/cross/<triple>`).
        dir: PathBuf,
    },
    /// Remove what an interrupted guest download left in `dir`.
    RemovePartialGuest {
        /// The guest directory.
        dir: PathBuf,
    },
    /// Fetch the arm64 guest's kernel and busybox into `dir`.
    FetchGuest {
        /// The guest directory.
        dir: PathBuf,
    },
    /// `cargo install --locked --debug --root <root> <tool>@<version>`.
    CargoInstall {
        /// The tool.
        tool: Tool,
        /// The install root (under `target/`).
        root: PathBuf,
    },
}

impl Step {
    /// Whether the step needs root.
    pub fn needs_root(&self) -> bool {
        !matches!(
            self,
            Step::RemovePartialGuest { .. }
                | Step::FetchGuest { .. }
                | Step::FetchCrossStd { .. }
                | Step::CargoInstall { .. }
        )
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddSuite { suite, uri, file } => {
                write!(f, "add {suite} from {uri} (write {})", file.display())
            }
            Step::AddArchitecture(arch) => write!(f, "dpkg --add-architecture {arch}"),
            Step::AptUpdate { reason, .. } => write!(f, "apt-get update ({reason})"),
            Step::AptInstall {
                packages,
                release,
                allow_downgrades,
            } => {
                f.write_str("apt-get install -y --no-install-recommends ")?;
                if *allow_downgrades {
                    f.write_str("--allow-downgrades ")?;
                }
                if let Some(release) = release {
                    write!(f, "-t {release} ")?;
                }
                f.write_str(&packages.join(" "))
            }
            Step::FetchCrossStd { target, dir } => write!(
                f,
                "fetch {CROSS_STD_PACKAGE}:{} of the installed {RUSTC}'s version and extract \
                 it into {}",
                target.arch,
                dir.display()
            ),
            Step::RemovePartialGuest { dir } => {
                write!(f, "remove the partial guest download in {}", dir.display())
            }
            Step::FetchGuest { dir } => write!(
                f,
                "fetch the arm64 guest (cloud kernel from {BACKPORTS}, busybox-static) into {} \
                 with apt-get download and dpkg -x",
                dir.display()
            ),
            Step::CargoInstall { tool, root } => write!(
                f,
                "cargo install --locked --debug --root {} {}@{}",
                root.display(),
                tool.name,
                tool.version
            ),
        }
    }
}

/// Why no plan can be made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanError {
    /// Setup installs on Debian bookworm only.
    NotBookworm(String),
    /// The package tables are for x86_64 hosts.
    UnsupportedHost(String),
}

impl fmt::Display for PlanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::NotBookworm(os) => write!(
                f,
                "cargo xtask setup installs on Debian 12 (bookworm); this machine is {os}: install \
                 QEMU >= {MIN_QEMU_MAJOR}, qemu-efi-aarch64 and the tools README names by hand"
            ),
            PlanError::UnsupportedHost(arch) => write!(
                f,
                "cargo xtask setup knows the packages for amd64 hosts; this one is {arch}"
            ),
        }
    }
}

/// Whether `package` is installed at a version that counts.
pub fn satisfied(state: &MachineState, package: &Package) -> bool {
    match state.installed.get(package.name) {
        None => false,
        Some(version) => match package.min_major {
            None => true,
            Some(min) => upstream_major(version).is_some_and(|major| major >= min),
        },
    }
}

/// The upstream major version of a Debian version: `1:10.0.2+ds-2~bpo12+1` → 10.
pub fn upstream_major(version: &str) -> Option<u32> {
    let without_epoch = version.split_once(':').map_or(version, |(_, rest)| rest);
    let digits: String = without_epoch
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// Where setup puts what it fetches and builds (all under `target/`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dirs {
    /// The arm64 guest's files.
    pub guest: PathBuf,
    /// The `cargo install` root.
    pub tools: PathBuf,
    /// The cross targets' sysroots, one directory per triple.
    pub cross: PathBuf,
}

/// Whether Debian's Rust toolchain is installed, all of one version, and (when the lists say)
/// bookworm's version. Returns that version.
pub fn rust_toolchain(state: &MachineState) -> Option<&str> {
    let version = state.installed.get(RUSTC)?;
    let same = RUST_TOOLCHAIN
        .iter()
        .all(|p| state.installed.get(*p) == Some(version));
    let bookworms = state
        .rust_main_version
        .as_ref()
        .is_none_or(|main| main == version);
    (same && bookworms).then_some(version.as_str())
}

/// The steps that make `state` ready for `profile`, in order. Empty when it is ready.
pub fn plan(state: &MachineState, profile: Profile, dirs: &Dirs) -> Result<Vec<Step>, PlanError> {
    match &state.os {
        Os::Bookworm => {}
        Os::Other(name) => return Err(PlanError::NotBookworm(name.clone())),
    }
    if state.native_arch != "amd64" {
        return Err(PlanError::UnsupportedHost(state.native_arch.clone()));
    }
    let requirements = Requirements::of(profile);
    let missing: Vec<&Package> = requirements
        .packages
        .iter()
        .filter(|p| !satisfied(state, p))
        .collect();
    let guest_missing = requirements.guest && state.guest != GuestFiles::Complete;
    let toolchain = rust_toolchain(state);
    let toolchain_missing = requirements.cross && toolchain.is_none();
    let cross_missing: Vec<CrossTarget> = if requirements.cross {
        CROSS_TARGETS
            .iter()
            .filter(|t| {
                toolchain.is_none() || state.cross_std.get(t.arch).map(String::as_str) != toolchain
            })
            .copied()
            .collect()
    } else {
        Vec::new()
    };
    let tools_missing: Vec<Tool> = requirements
        .tools
        .iter()
        .filter(|t| state.tools.get(t.name).map(String::as_str) != Some(t.version))
        .copied()
        .collect();

    // The package lists (suite, architecture) the apt steps below read.
    let native = state.native_arch.as_str();
    let mut lists: BTreeSet<(&str, &str)> = BTreeSet::new();
    for package in &missing {
        let arch = package.arch().unwrap_or(native);
        lists.insert((BOOKWORM, arch));
        lists.insert((package.suite(), arch));
    }
    if toolchain_missing {
        lists.insert((BOOKWORM, native));
    }
    for target in &cross_missing {
        lists.insert((BOOKWORM, target.arch));
    }
    if guest_missing {
        lists.insert((BOOKWORM, GUEST_ARCH));
        lists.insert((BACKPORTS, GUEST_ARCH));
    }

    let mut steps = Vec::new();
    let mut changes = Vec::new();
    if lists.iter().any(|(suite, _)| *suite == BACKPORTS) && !state.suites.contains(BACKPORTS) {
        steps.push(Step::AddSuite {
            suite: BACKPORTS,
            uri: state
                .debian_uri
                .clone()
                .unwrap_or_else(|| DEFAULT_DEBIAN_URI.to_owned()),
            file: PathBuf::from(BACKPORTS_LIST),
        });
        changes.push(format!("new suite {BACKPORTS}"));
    }
    let archs: BTreeSet<&str> = lists.iter().map(|(_, arch)| *arch).collect();
    for arch in archs {
        if arch != native && !state.foreign_archs.contains(arch) {
            steps.push(Step::AddArchitecture(arch.to_owned()));
            changes.push(format!("new architecture {arch}"));
        }
    }
    let unfetched: Vec<String> = lists
        .iter()
        .filter(|(suite, arch)| !state.lists.contains(&(suite.to_string(), arch.to_string())))
        .map(|(suite, arch)| format!("{suite}/{arch}"))
        .collect();
    if !changes.is_empty() || !unfetched.is_empty() {
        let mut reasons = changes;
        if !unfetched.is_empty() {
            reasons.push(format!(
                "package lists never fetched: {}",
                unfetched.join(", ")
            ));
        }
        steps.push(Step::AptUpdate {
            reason: reasons.join("; "),
            lists: lists
                .iter()
                .map(|(suite, arch)| (suite.to_string(), arch.to_string()))
                .collect(),
        });
    }
    for backports in [true, false] {
        let packages: Vec<String> = missing
            .iter()
            .filter(|p| p.backports == backports)
            .map(|p| p.name.to_owned())
            .collect();
        if !packages.is_empty() {
            steps.push(Step::AptInstall {
                packages,
                release: backports.then_some(BACKPORTS),
                allow_downgrades: false,
            });
        }
    }
    if toolchain_missing {
        let packages = RUST_TOOLCHAIN
            .iter()
            .map(|p| match &state.rust_main_version {
                Some(version) => format!("{p}={version}"),
                None => (*p).to_owned(),
            })
            .collect();
        steps.push(Step::AptInstall {
            packages,
            release: Some(BOOKWORM),
            allow_downgrades: true,
        });
    }
    for target in cross_missing {
        steps.push(Step::FetchCrossStd {
            target,
            dir: dirs.cross.join(target.triple),
        });
    }
    if guest_missing {
        if state.guest == GuestFiles::Partial {
            steps.push(Step::RemovePartialGuest {
                dir: dirs.guest.clone(),
            });
        }
        steps.push(Step::FetchGuest {
            dir: dirs.guest.clone(),
        });
    }
    for tool in tools_missing {
        steps.push(Step::CargoInstall {
            tool,
            root: dirs.tools.clone(),
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::path::Path;

    const RUST_MAIN: &str = "1.85.0+dfsg3-1~deb12u3";
    const RUST_SECURITY: &str = "1.96.0+dfsg1-1~deb12u2";

    fn dirs() -> Dirs {
        Dirs {
            guest: "/w/target/guest".into(),
            tools: "/w/target/tools".into(),
            cross: "/w/target/cross".into(),
        }
    }

    /// A machine as a newcomer gets it: Debian bookworm, amd64, its own lists fetched,
    /// nothing of ours installed.
    fn fresh() -> MachineState {
        MachineState {
            os: Os::Bookworm,
            native_arch: "amd64".into(),
            foreign_archs: BTreeSet::new(),
            suites: [BOOKWORM, "bookworm-updates"]
                .into_iter()
                .map(String::from)
                .collect(),
            debian_uri: Some("http://mirror.example/debian".into()),
            lists: [(BOOKWORM.to_owned(), "amd64".to_owned())].into(),
            installed: BTreeMap::new(),
            guest: GuestFiles::Missing,
            tools: BTreeMap::new(),
            rust_main_version: None,
            cross_std: BTreeMap::new(),
            is_root: true,
        }
    }

    /// The machine after a complete `ci` setup.
    fn complete() -> MachineState {
        let mut state = fresh();
        state.suites.insert(BACKPORTS.into());
        for arch in ["arm64", "ppc64el", "s390x"] {
            state.foreign_archs.insert(arch.into());
            state.lists.insert((BOOKWORM.into(), arch.into()));
            state.lists.insert((BACKPORTS.into(), arch.into()));
        }
        state.lists.insert((BACKPORTS.into(), "amd64".into()));
        for p in Requirements::of(Profile::Ci).packages {
            let version = if p.backports {
                "1:10.0.2+ds-2+deb13u1~bpo12+1"
            } else {
                "1.0"
            };
            state.installed.insert(p.name.into(), version.into());
        }
        for p in RUST_TOOLCHAIN {
            state.installed.insert((*p).into(), RUST_MAIN.into());
        }
        state.rust_main_version = Some(RUST_MAIN.into());
        for target in CROSS_TARGETS {
            state.cross_std.insert(target.arch.into(), RUST_MAIN.into());
        }
        state.guest = GuestFiles::Complete;
        state
            .tools
            .insert(VIRTIOFSD.name.into(), VIRTIOFSD.version.into());
        state
    }

    fn plan_for(state: &MachineState, profile: Profile) -> Vec<Step> {
        plan(state, profile, &dirs()).expect("a plan")
    }

    /// The steps as the one-line strings `--dry-run` prints, shortened to their verb and
    /// first operands for readable assertions.
    fn outline(steps: &[Step]) -> Vec<String> {
        steps
            .iter()
            .map(|s| match s {
                Step::AddSuite { suite, .. } => format!("add-suite {suite}"),
                Step::AddArchitecture(arch) => format!("add-arch {arch}"),
                Step::AptUpdate { .. } => "update".into(),
                Step::AptInstall {
                    packages,
                    release,
                    allow_downgrades,
                } => format!(
                    "install{}{} {}",
                    match *release {
                        Some(BACKPORTS) => "-bpo",
                        Some(BOOKWORM) => "-bookworm",
                        _ => "",
                    },
                    if *allow_downgrades { "-downgrades" } else { "" },
                    packages.join(" ")
                ),
                Step::FetchCrossStd { target, .. } => format!("cross-std {}", target.arch),
                Step::RemovePartialGuest { .. } => "remove-partial-guest".into(),
                Step::FetchGuest { .. } => "fetch-guest".into(),
                Step::CargoInstall { tool, .. } => format!("cargo-install {}", tool.name),
            })
            .collect()
    }

    fn names(packages: &[Package]) -> String {
        packages
            .iter()
            .map(|p| p.name)
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn backports_names(profile: Profile) -> String {
        let packages: Vec<Package> = Requirements::of(profile)
            .packages
            .into_iter()
            .filter(|p| p.backports)
            .collect();
        names(&packages)
    }

    fn main_names(profile: Profile) -> String {
        let packages: Vec<Package> = Requirements::of(profile)
            .packages
            .into_iter()
            .filter(|p| !p.backports)
            .collect();
        names(&packages)
    }

    #[test]
    fn a_fresh_machine_gets_every_step_with_the_update_after_every_change() {
        let steps = plan_for(&fresh(), Profile::Ci);
        assert_eq!(
            outline(&steps),
            [
                "add-suite bookworm-backports".to_owned(),
                "add-arch arm64".into(),
                "add-arch ppc64el".into(),
                "add-arch s390x".into(),
                "update".into(),
                format!("install-bpo {}", backports_names(Profile::Ci)),
                format!("install {}", main_names(Profile::Ci)),
                "install-bookworm-downgrades rustc-web cargo-web rust-web-clippy".into(),
                "cross-std arm64".into(),
                "cross-std ppc64el".into(),
                "cross-std s390x".into(),
                "fetch-guest".into(),
                "cargo-install virtiofsd".into(),
            ]
        );
        let Step::FetchCrossStd { dir, .. } = &steps[10] else {
            unreachable!()
        };
        assert_eq!(dir, Path::new("/w/target/cross/s390x-unknown-linux-gnu"));
        let Step::AddSuite { uri, file, .. } = &steps[0] else {
            unreachable!()
        };
        assert_eq!(uri, "http://mirror.example/debian");
        assert_eq!(file, Path::new(BACKPORTS_LIST));
        let Step::AptUpdate { reason, lists } = &steps[4] else {
            unreachable!()
        };
        assert!(reason.contains("new suite bookworm-backports"), "{reason}");
        assert!(reason.contains("new architecture s390x"), "{reason}");
        // What the update must bring: the lists the installs and the guest fetch read, and
        // not, say, debian-security's (a mirror mid-sync may fail those; setup goes on).
        assert!(
            lists.contains(&(BOOKWORM.into(), "s390x".into())),
            "{lists:?}"
        );
        assert!(
            lists.contains(&(BACKPORTS.into(), "arm64".into())),
            "{lists:?}"
        );
        assert!(lists
            .iter()
            .all(|(suite, _)| suite == BOOKWORM || suite == BACKPORTS));
    }

    #[test]
    fn the_demo_profile_on_a_fresh_machine_installs_no_cross_toolchain() {
        let steps = plan_for(&fresh(), Profile::Demo);
        assert_eq!(
            outline(&steps),
            [
                "add-suite bookworm-backports",
                "add-arch arm64",
                "update",
                "install-bpo qemu-system-arm",
                "install qemu-efi-aarch64",
                "fetch-guest",
            ]
        );
    }

    #[test]
    fn a_machine_with_everything_plans_nothing() {
        assert_eq!(plan_for(&complete(), Profile::Ci), []);
        assert_eq!(plan_for(&complete(), Profile::Demo), []);
    }

    #[test]
    fn backports_present_but_arm64_missing_adds_the_arch_then_updates() {
        // The state the old setup tripped on: the suite was added in an earlier run.
        let mut state = fresh();
        state.suites.insert(BACKPORTS.into());
        state.lists.insert((BACKPORTS.into(), "amd64".into()));
        let steps = plan_for(&state, Profile::Demo);
        assert_eq!(
            outline(&steps),
            [
                "add-arch arm64",
                "update",
                "install-bpo qemu-system-arm",
                "install qemu-efi-aarch64",
                "fetch-guest",
            ]
        );
        let Step::AptUpdate { reason, .. } = &steps[1] else {
            unreachable!()
        };
        assert!(reason.contains("new architecture arm64"), "{reason}");
    }

    #[test]
    fn arm64_present_but_its_lists_never_fetched_updates_before_installing() {
        let mut state = complete();
        state.lists.retain(|(_, arch)| arch != "arm64");
        state.cross_std.remove("arm64");
        let steps = plan_for(&state, Profile::Ci);
        assert_eq!(outline(&steps), ["update", "cross-std arm64"]);
        let Step::AptUpdate { reason, .. } = &steps[0] else {
            unreachable!()
        };
        assert_eq!(reason, "package lists never fetched: bookworm/arm64");
    }

    #[test]
    fn lists_never_fetched_for_an_installed_arch_need_no_update_when_nothing_reads_them() {
        let mut state = complete();
        state.lists.retain(|(_, arch)| arch != "arm64");
        assert_eq!(plan_for(&state, Profile::Ci), []);
    }

    #[test]
    fn bookworms_qemu_7_2_is_upgraded_from_backports() {
        let mut state = complete();
        for qemu in ["qemu-system-arm", "qemu-system-x86", "qemu-user"] {
            state
                .installed
                .insert(qemu.into(), "1:7.2+dfsg-7+deb12u18+b3".into());
        }
        assert_eq!(
            outline(&plan_for(&state, Profile::Ci)),
            ["install-bpo qemu-system-arm qemu-system-x86 qemu-user"]
        );
    }

    #[test]
    fn qemu_7_2_on_a_machine_without_backports_adds_the_suite_first() {
        let mut state = fresh();
        state.foreign_archs.insert("arm64".into());
        state.lists.insert((BOOKWORM.into(), "arm64".into()));
        state
            .installed
            .insert("qemu-system-arm".into(), "1:7.2+dfsg-7+deb12u18+b3".into());
        state
            .installed
            .insert("qemu-efi-aarch64".into(), "2022.11-6+deb12u2".into());
        state.guest = GuestFiles::Complete;
        let steps = plan_for(&state, Profile::Demo);
        assert_eq!(
            outline(&steps),
            [
                "add-suite bookworm-backports",
                "update",
                "install-bpo qemu-system-arm"
            ]
        );
    }

    #[test]
    fn a_partial_guest_download_is_removed_and_fetched_again() {
        let mut state = complete();
        state.guest = GuestFiles::Partial;
        assert_eq!(
            outline(&plan_for(&state, Profile::Demo)),
            ["remove-partial-guest", "fetch-guest"]
        );
    }

    #[test]
    fn a_missing_guest_with_arm64_lists_missing_updates_first() {
        let mut state = complete();
        state.guest = GuestFiles::Missing;
        state
            .lists
            .remove(&(BACKPORTS.to_owned(), "arm64".to_owned()));
        assert_eq!(
            outline(&plan_for(&state, Profile::Demo)),
            ["update", "fetch-guest"]
        );
    }

    #[test]
    fn a_rust_toolchain_from_the_security_suite_goes_back_to_bookworms_with_every_cross_std() {
        // Bookworm's LTS security suite has rustc-web 1.96 for amd64 and arm64 but not s390x:
        // the toolchain must be bookworm's, which every cross target's std exists for.
        let mut state = complete();
        for p in RUST_TOOLCHAIN {
            state.installed.insert((*p).into(), RUST_SECURITY.into());
        }
        let steps = plan_for(&state, Profile::Ci);
        assert_eq!(
            outline(&steps),
            [
                format!(
                    "install-bookworm-downgrades rustc-web={RUST_MAIN} cargo-web={RUST_MAIN} \
                     rust-web-clippy={RUST_MAIN}"
                ),
                "cross-std arm64".into(),
                "cross-std ppc64el".into(),
                "cross-std s390x".into(),
            ]
        );
        assert!(plan_for(&state, Profile::Demo).is_empty());
    }

    #[test]
    fn a_toolchain_of_mixed_versions_is_reinstalled() {
        let mut state = complete();
        state.rust_main_version = None;
        state
            .installed
            .insert("cargo-web".into(), RUST_SECURITY.into());
        assert_eq!(
            outline(&plan_for(&state, Profile::Ci))[0],
            "install-bookworm-downgrades rustc-web cargo-web rust-web-clippy"
        );
    }

    #[test]
    fn a_cross_std_of_another_version_is_fetched_again() {
        let mut state = complete();
        state.cross_std.insert("s390x".into(), RUST_SECURITY.into());
        assert_eq!(outline(&plan_for(&state, Profile::Ci)), ["cross-std s390x"]);
    }

    #[test]
    fn a_tool_of_another_version_is_installed_again() {
        let mut state = complete();
        state.tools.insert(VIRTIOFSD.name.into(), "1.10.0".into());
        assert_eq!(
            outline(&plan_for(&state, Profile::Ci)),
            ["cargo-install virtiofsd"]
        );
        assert_eq!(plan_for(&state, Profile::Demo), []);
    }

    #[test]
    fn a_container_without_any_package_list_updates_before_installing() {
        // `debian:bookworm` images ship without /var/lib/apt/lists.
        let mut state = fresh();
        state.lists.clear();
        state.suites.insert(BACKPORTS.into());
        state.foreign_archs.insert("arm64".into());
        let steps = plan_for(&state, Profile::Demo);
        assert_eq!(outline(&steps)[0], "update");
        let Step::AptUpdate { reason, .. } = &steps[0] else {
            unreachable!()
        };
        assert!(reason.contains("bookworm/amd64"), "{reason}");
    }

    #[test]
    fn other_systems_are_refused_with_what_to_do() {
        let mut state = fresh();
        state.os = Os::Other("Ubuntu 24.04".into());
        let err = plan(&state, Profile::Ci, &dirs()).unwrap_err();
        assert!(err.to_string().contains("Ubuntu 24.04"), "{err}");
        let mut state = fresh();
        state.native_arch = "arm64".into();
        assert_eq!(
            plan(&state, Profile::Ci, &dirs()),
            Err(PlanError::UnsupportedHost("arm64".into()))
        );
    }

    #[test]
    fn debian_versions_give_their_upstream_major() {
        assert_eq!(upstream_major("1:10.0.2+ds-2+deb13u1~bpo12+1"), Some(10));
        assert_eq!(upstream_major("1:7.2+dfsg-7+deb12u18+b3"), Some(7));
        assert_eq!(upstream_major("12.2.0-14"), Some(12));
        assert_eq!(upstream_major("garbage"), None);
    }

    #[test]
    fn steps_print_as_commands() {
        let step = Step::AptInstall {
            packages: vec!["a".into(), "b:arm64".into()],
            release: Some(BACKPORTS),
            allow_downgrades: false,
        };
        assert_eq!(
            step.to_string(),
            "apt-get install -y --no-install-recommends -t bookworm-backports a b:arm64"
        );
        assert!(step.needs_root());
        assert!(!Step::FetchGuest { dir: dirs().guest }.needs_root());
    }
}

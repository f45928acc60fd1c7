//! What the machine has, read without changing anything: the input of the planner.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use super::plan::{Dirs, CROSS_TARGETS, RUSTC};
use crate::run::Step as Command;

/// The operating system, as far as setup cares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Os {
    /// Debian 12.
    Bookworm,
    /// Anything else (its `PRETTY_NAME`).
    Other(String),
}

/// How much of the arm64 guest is on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestFiles {
    /// Kernel, busybox and modules are all there.
    Complete,
    /// A download or extraction was interrupted: something is there, not all of it.
    Partial,
    /// Nothing.
    Missing,
}

/// The machine's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineState {
    /// The operating system.
    pub os: Os,
    /// `dpkg --print-architecture`.
    pub native_arch: String,
    /// `dpkg --print-foreign-architectures`.
    pub foreign_archs: BTreeSet<String>,
    /// The enabled suites of the Debian archive (`bookworm`, `bookworm-backports`, …).
    pub suites: BTreeSet<String>,
    /// The Debian archive's URI, as the machine's sources name it.
    pub debian_uri: Option<String>,
    /// The (suite, architecture) pairs whose `main` package list has been fetched.
    pub lists: BTreeSet<(String, String)>,
    /// Installed packages and their versions; foreign-architecture packages as `name:arch`.
    pub installed: BTreeMap<String, String>,
    /// The arm64 guest's files.
    pub guest: GuestFiles,
    /// Tools installed with `cargo install` under the tools root, and their versions.
    pub tools: BTreeMap<String, String>,
    /// `rustc-web`'s version in bookworm itself (not its security suite), when the package
    /// lists are there to say.
    pub rust_main_version: Option<String>,
    /// The cross targets' extracted standard libraries: Debian architecture → version.
    pub cross_std: BTreeMap<String, String>,
    /// Whether this process is root (apt and dpkg steps need it).
    pub is_root: bool,
}

/// Where apt keeps the fetched package lists.
pub const APT_LISTS: &str = "/var/lib/apt/lists";

/// The file in a cross sysroot that records the version of the standard library in it.
pub const CROSS_STD_STAMP: &str = "VERSION";

/// Reads the machine's state.
pub fn probe(dirs: &Dirs) -> MachineState {
    let native_arch = Command::new("dpkg", &["--print-architecture"])
        .output()
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let foreign_archs = Command::new("dpkg", &["--print-foreign-architectures"])
        .output()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let sources = read_sources();
    let installed = Command::new(
        "dpkg-query",
        &[
            "-W",
            "-f=${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n",
        ],
    )
    .output()
    .map(|text| installed_packages(&text, &native_arch))
    .unwrap_or_default();
    MachineState {
        os: os_release(&fs::read_to_string("/etc/os-release").unwrap_or_default()),
        native_arch,
        foreign_archs,
        suites: enabled_suites(&sources),
        debian_uri: debian_uri(&sources),
        lists: fetched_lists(
            fs::read_dir(APT_LISTS)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok()),
        ),
        installed,
        guest: guest_files(&dirs.guest),
        tools: installed_tools(
            &fs::read_to_string(dirs.tools.join(".crates2.json")).unwrap_or_default(),
            &dirs.tools,
        ),
        rust_main_version: Command::new("apt-cache", &["madison", RUSTC])
            .output()
            .and_then(|text| bookworm_version(&text)),
        cross_std: CROSS_TARGETS
            .iter()
            .filter_map(|t| {
                let stamp = dirs.cross.join(t.triple).join(CROSS_STD_STAMP);
                let version = fs::read_to_string(stamp).ok()?;
                Some((t.arch.to_owned(), version.trim().to_owned()))
            })
            .collect(),
        // SAFETY: geteuid has no preconditions and cannot fail.
        is_root: unsafe { libc::geteuid() } == 0,
    }
}

/// `Os` from `/etc/os-release`.
pub fn os_release(text: &str) -> Os {
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    if field("ID").as_deref() == Some("debian")
        && field("VERSION_CODENAME").as_deref() == Some("bookworm")
    {
        Os::Bookworm
    } else {
        Os::Other(field("PRETTY_NAME").unwrap_or_else(|| "an unknown system".into()))
    }
}

/// One source entry: its URIs and suites.
#[derive(Debug, Default, PartialEq, Eq)]
struct Source {
    uris: Vec<String>,
    suites: Vec<String>,
}

/// The enabled entries of `/etc/apt/sources.list` and `/etc/apt/sources.list.d/*.{list,sources}`
/// (apt reads no other file names there).
fn read_sources() -> Vec<Source> {
    let mut sources =
        parse_one_line(&fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    let mut files: Vec<_> = fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    for path in files {
        let text = fs::read_to_string(&path).unwrap_or_default();
        match path.extension().and_then(|e| e.to_str()) {
            Some("list") => sources.extend(parse_one_line(&text)),
            Some("sources") => sources.extend(parse_deb822(&text)),
            _ => {}
        }
    }
    sources
}

/// `deb [options] URI SUITE COMPONENT…` lines.
fn parse_one_line(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?.trim_start();
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_owned();
            let suite = words.next()?.to_owned();
            Some(Source {
                uris: vec![uri],
                suites: vec![suite],
            })
        })
        .collect()
}

/// deb822 stanzas (`Types: deb`, `URIs:`, `Suites:`, `Enabled: no` skips one).
fn parse_deb822(text: &str) -> Vec<Source> {
    text.split("\n\n")
        .filter_map(|stanza| {
            let field = |key: &str| {
                stanza.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim().eq_ignore_ascii_case(key)).then(|| v.trim().to_owned())
                })
            };
            let types = field("Types")?;
            if !types.split_whitespace().any(|t| t == "deb") {
                return None;
            }
            if field("Enabled").is_some_and(|v| v.eq_ignore_ascii_case("no")) {
                return None;
            }
            let words = |v: Option<String>| -> Vec<String> {
                v.unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect()
            };
            Some(Source {
                uris: words(field("URIs")),
                suites: words(field("Suites")),
            })
        })
        .collect()
}

fn is_debian_archive(uri: &str) -> bool {
    uri.trim_end_matches('/').ends_with("/debian")
}

/// The suites enabled for the Debian archive (not debian-security or third parties).
fn enabled_suites(sources: &[Source]) -> BTreeSet<String> {
    sources
        .iter()
        .filter(|s| s.uris.iter().any(|u| is_debian_archive(u)))
        .flat_map(|s| s.suites.iter().cloned())
        .collect()
}

/// The Debian archive's URI.
fn debian_uri(sources: &[Source]) -> Option<String> {
    sources
        .iter()
        .flat_map(|s| s.uris.iter())
        .find(|u| is_debian_archive(u))
        .cloned()
}

/// The (suite, arch) pairs of fetched `main` package lists, from the file names under
/// `/var/lib/apt/lists` (`…_dists_<suite>_main_binary-<arch>_Packages[.lz4|.gz|…]`).
pub fn fetched_lists(names: impl Iterator<Item = String>) -> BTreeSet<(String, String)> {
    names
        .filter_map(|name| {
            let (_, after) = name.split_once("_dists_")?;
            let (suite, after) = after.split_once("_main_binary-")?;
            let (arch, _) = after.split_once("_Packages")?;
            Some((suite.to_owned(), arch.to_owned()))
        })
        .collect()
}

/// Installed packages from `dpkg-query -W -f='${Package}\t${Architecture}\t${Version}\t${db:Status-Abbrev}\n'`.
pub fn installed_packages(text: &str, native_arch: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split('\t');
            let (name, arch, version, status) = (
                fields.next()?,
                fields.next()?,
                fields.next()?,
                fields.next()?,
            );
            if !status.starts_with("ii") {
                return None;
            }
            let key = if arch == native_arch || arch == "all" {
                name.to_owned()
            } else {
                format!("{name}:{arch}")
            };
            Some((key, version.to_owned()))
        })
        .collect()
}

/// The version `apt-cache madison` lists from bookworm's own suite (`… | <version> | <uri>
/// bookworm/main <arch> Packages`).
pub fn bookworm_version(madison: &str) -> Option<String> {
    madison.lines().find_map(|line| {
        let mut fields = line.split('|').map(str::trim);
        let (_, version, source) = (fields.next()?, fields.next()?, fields.next()?);
        source
            .contains(" bookworm/main ")
            .then(|| version.to_owned())
    })
}

/// The guest directory's state.
fn guest_files(dir: &Path) -> GuestFiles {
    if hvarch_tests::guest::find(dir).is_ok() {
        return GuestFiles::Complete;
    }
    let has_entries =
        |sub: &str| fs::read_dir(dir.join(sub)).is_ok_and(|mut entries| entries.next().is_some());
    if has_entries("debs") || has_entries("root") {
        GuestFiles::Partial
    } else {
        GuestFiles::Missing
    }
}

/// Tools `cargo install --root <root>` recorded in `<root>/.crates2.json` whose binary is
/// still there, and their versions.
pub fn installed_tools(crates2_json: &str, root: &Path) -> BTreeMap<String, String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(crates2_json) else {
        return BTreeMap::new();
    };
    let Some(installs) = value.get("installs").and_then(|v| v.as_object()) else {
        return BTreeMap::new();
    };
    installs
        .iter()
        .filter_map(|(key, info)| {
            // "virtiofsd 1.14.0 (registry+https://github.com/rust-lang/crates.io-index)"
            let mut words = key.split_whitespace();
            let (name, version) = (words.next()?, words.next()?);
            let bins = info.get("bins")?.as_array()?;
            let present = bins
                .iter()
                .filter_map(|b| b.as_str())
                .all(|b| root.join("bin").join(b).is_file());
            present.then(|| (name.to_owned(), version.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_recognises_bookworm_only() {
        let bookworm = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_CODENAME=bookworm\n";
        assert_eq!(os_release(bookworm), Os::Bookworm);
        let trixie =
            "PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nID=debian\nVERSION_CODENAME=trixie\n";
        assert_eq!(
            os_release(trixie),
            Os::Other("Debian GNU/Linux 13 (trixie)".into())
        );
        assert_eq!(os_release(""), Os::Other("an unknown system".into()));
    }

    #[test]
    fn sources_in_both_formats_give_suites_and_the_archive_uri() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n\
                      Types: deb\nEnabled: no\nURIs: http://deb.debian.org/debian\nSuites: trixie\n";
        let one_line = "# deb http://x/debian sid main\ndeb [signed-by=/k.gpg] http://ftp.de.debian.org/debian/ bookworm-backports main\n";
        let mut sources = parse_deb822(deb822);
        sources.extend(parse_one_line(one_line));
        assert_eq!(
            enabled_suites(&sources),
            ["bookworm", "bookworm-backports", "bookworm-updates"]
                .into_iter()
                .map(String::from)
                .collect()
        );
        assert_eq!(
            debian_uri(&sources).as_deref(),
            Some("http://deb.debian.org/debian")
        );
    }

    #[test]
    fn fetched_lists_come_from_list_file_names() {
        let names = [
            "deb.debian.org_debian_dists_bookworm_main_binary-amd64_Packages.lz4",
            "deb.debian.org_debian_dists_bookworm-backports_main_binary-arm64_Packages.lz4",
            "deb.debian.org_debian_dists_bookworm_InRelease",
            "deb.debian.org_debian_dists_bookworm_main_dep11_Components-amd64.yml.gz",
            "lock",
        ];
        let lists = fetched_lists(names.into_iter().map(String::from));
        assert_eq!(
            lists,
            [
                ("bookworm".to_owned(), "amd64".to_owned()),
                ("bookworm-backports".to_owned(), "arm64".to_owned())
            ]
            .into()
        );
    }

    #[test]
    fn installed_packages_qualify_foreign_architectures_and_skip_removed_ones() {
        let text = "qemu-system-arm\tamd64\t1:10.0.2\tii \n\
                    libstd-rust-web-dev\tarm64\t1.85.0\tii \n\
                    qemu-efi-aarch64\tall\t2022.11\tii \n\
                    busybox\tamd64\t1.35\trc \n";
        let installed = installed_packages(text, "amd64");
        assert_eq!(
            installed.get("qemu-system-arm").map(String::as_str),
            Some("1:10.0.2")
        );
        assert!(installed.contains_key("libstd-rust-web-dev:arm64"));
        assert!(!installed.contains_key("libstd-rust-web-dev"));
        assert!(installed.contains_key("qemu-efi-aarch64"));
        assert!(!installed.contains_key("busybox"));
    }

    #[test]
    fn bookworms_own_version_is_read_from_madison() {
        let madison = " rustc-web | 1.96.0+dfsg1-1~deb12u2 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n \
                        rustc-web | 1.85.0+dfsg3-1~deb12u3 | http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        assert_eq!(
            bookworm_version(madison).as_deref(),
            Some("1.85.0+dfsg3-1~deb12u3")
        );
        assert_eq!(bookworm_version(""), None);
    }

    #[test]
    fn tools_count_only_when_their_binary_is_there() {
        let dir = std::env::temp_dir().join(format!("xtask-tools-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        let json = r#"{"installs": {"virtiofsd 1.14.0 (registry+https://github.com/rust-lang/crates.io-index)": {"bins": ["virtiofsd"]}}}"#;
        assert!(installed_tools(json, &dir).is_empty());
        fs::write(dir.join("bin/virtiofsd"), "").unwrap();
        assert_eq!(
            installed_tools(json, &dir)
                .get("virtiofsd")
                .map(String::as_str),
            Some("1.14.0")
        );
        assert!(installed_tools("not json", &dir).is_empty());
        let _ = fs::remove_dir_all(&dir);
    }
}

//! `cargo xtask ci`'s examples stage: the minimal VMMs of `crates/hvarch/examples` (`vmm` on
//! the blocking facade, `async_vmm` on the tokio one), built and run against the arm64 test
//! guest (`HVARCH_GUEST_DIR`, fetched by `cargo xtask setup`): each launches the guest under
//! TCG, hot-plugs a disk, saves, restores and shuts down, and must exit 0.

use hvarch_tests::guest;

use crate::run::{cargo, workspace_root, Step};

/// The examples run, each in a work directory of its own.
const EXAMPLES: &[&str] = &["vmm", "async_vmm"];

pub fn run() -> Result<(), String> {
    let files = guest::find(&guest::guest_dir())?;
    let initramfs = guest::initramfs(&files)?;
    cargo(&["build", "-p", "hvarch", "--all-features", "--examples"]).run()?;
    for example in EXAMPLES {
        let work = hvarch_tests::TempDir::new();
        let binary = workspace_root().join("target/debug/examples").join(example);
        let args = [
            files.kernel.as_os_str(),
            initramfs.as_os_str(),
            work.path().as_os_str(),
        ];
        Step::new(binary, &args).run()?;
    }
    Ok(())
}

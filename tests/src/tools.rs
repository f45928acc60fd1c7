//! Host tools the tests need that Debian does not package, built by `cargo xtask setup`
//! under the workspace's `target/tools/bin`.

use std::path::{Path, PathBuf};

/// Environment variable naming another directory for the tools (default
/// `<workspace>/target/tools/bin`; a git worktree may point it at the main checkout's).
pub const TOOLS_DIR_ENV: &str = "HVARCH_TOOLS_DIR";

/// The tools directory: `$HVARCH_TOOLS_DIR`, else `<workspace>/target/tools/bin`.
pub fn tools_dir() -> PathBuf {
    crate::target_dir_or_env(TOOLS_DIR_ENV, "tools/bin")
}

/// The Rust virtiofsd (`cargo xtask setup` installs it with `cargo install`) in
/// [`tools_dir`]; the error names where it was looked for and how to get it.
pub fn find_virtiofsd() -> Result<PathBuf, String> {
    find_virtiofsd_in(&tools_dir())
}

/// virtiofsd in `dir`.
pub fn find_virtiofsd_in(dir: &Path) -> Result<PathBuf, String> {
    let path = dir.join("virtiofsd");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "virtiofsd is missing at {}: run `cargo xtask setup` (it builds virtiofsd into \
             target/tools/bin), or set {TOOLS_DIR_ENV} to a directory holding it",
            path.display()
        ))
    }
}

/// [`find_virtiofsd`], panicking with its message: a missing virtiofsd fails a test.
pub fn virtiofsd() -> PathBuf {
    find_virtiofsd().unwrap_or_else(|e| panic!("{e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtiofsd_is_found_or_the_error_says_how_to_get_it() {
        let dir = crate::TempDir::new();
        let err = find_virtiofsd_in(dir.path()).unwrap_err();
        assert!(
            err.contains(&dir.join("virtiofsd").display().to_string()),
            "{err}"
        );
        assert!(err.contains("cargo xtask setup"), "{err}");
        std::fs::write(dir.join("virtiofsd"), "").unwrap();
        assert_eq!(find_virtiofsd_in(dir.path()), Ok(dir.join("virtiofsd")));
    }

    #[test]
    fn the_default_directory_is_under_the_workspace_target() {
        if std::env::var_os(TOOLS_DIR_ENV).is_some() {
            return;
        }
        let dir = tools_dir();
        let workspace = dir.ancestors().nth(3).unwrap();
        assert!(dir.ends_with("target/tools/bin"), "{}", dir.display());
        assert!(
            workspace.join("Cargo.toml").is_file(),
            "{}",
            workspace.display()
        );
    }
}

//! Running external commands with a printed command line and a clear error.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A command about to run: printed before it runs, with its failure turned into a message.
pub struct Step {
    cmd: Command,
}

impl Step {
    /// A step that runs `program` with `args`.
    pub fn new<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Self {
        let mut cmd = Command::new(program);
        cmd.args(args);
        Step { cmd }
    }

    /// Sets an environment variable for this step.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.cmd.env(key, value);
        self
    }

    /// Runs the step in `dir`.
    pub fn current_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Runs the step, inheriting stdio; fails unless it exits 0.
    pub fn run(mut self) -> Result<(), String> {
        let shown = self.describe();
        eprintln!("$ {shown}");
        let status = self
            .cmd
            .status()
            .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("`{shown}` exited with {status}"))
        }
    }

    /// Runs the step quietly and returns its stdout, or `None` if it could not run or failed.
    pub fn output(mut self) -> Option<String> {
        let out = self.cmd.output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn describe(&self) -> String {
        let mut parts = vec![self.cmd.get_program().to_string_lossy().into_owned()];
        parts.extend(
            self.cmd
                .get_args()
                .map(|a| a.to_string_lossy().into_owned()),
        );
        parts.join(" ")
    }
}

/// `cargo <args>` with the cargo that runs xtask, from the workspace root.
pub fn cargo(args: &[&str]) -> Step {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Step::new(cargo, args).current_dir(workspace_root())
}

/// The workspace root (the parent of `xtask/`).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

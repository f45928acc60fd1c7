//! Running external commands with a printed command line and a clear error.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

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

    /// Starts the step in the background, in a process group of its own, with its output
    /// going to `log`; [`Background::finish`] waits for it. Dropped unfinished, it is stopped.
    pub fn spawn_logged(mut self, log: &Path) -> Result<Background, String> {
        let shown = self.describe();
        let file =
            File::create(log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let stderr = file
            .try_clone()
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        eprintln!("$ {shown} > {} 2>&1 &", log.display());
        let child = self
            .cmd
            .stdout(file)
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start `{shown}`: {e}"))?;
        Ok(Background {
            child: Some(child),
            shown,
            log: log.to_path_buf(),
            started: Instant::now(),
        })
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

/// A step running in the background (see [`Step::spawn_logged`]).
pub struct Background {
    child: Option<Child>,
    shown: String,
    log: PathBuf,
    started: Instant,
}

impl Background {
    /// Waits for the step; fails unless it exits 0, with its log in the error. Prints how long
    /// it ran.
    pub fn finish(mut self) -> Result<(), String> {
        let Some(mut child) = self.child.take() else {
            return Err(format!("`{}` was already waited for", self.shown));
        };
        let status = child
            .wait()
            .map_err(|e| format!("cannot wait for `{}`: {e}", self.shown))?;
        if status.success() {
            eprintln!(
                "`{}` finished in {:.1?} (its output: {})",
                self.shown,
                self.started.elapsed(),
                self.log.display()
            );
            Ok(())
        } else {
            let log = std::fs::read_to_string(&self.log)
                .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.log.display()));
            Err(format!("`{}` exited with {status}:\n{log}", self.shown))
        }
    }
}

impl Drop for Background {
    /// Stops an unfinished step and everything it started (its process group).
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: kill(2) takes no pointers; the group is the one the child leads.
            unsafe { libc::kill(-pid, libc::SIGTERM) };
        }
        let _ = child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-run-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    #[test]
    fn a_background_step_reports_success_and_failure_with_its_log() {
        let dir = scratch("finish");
        let ok = Step::new("sh", &["-c", "echo built"])
            .spawn_logged(&dir.join("ok.log"))
            .expect("spawn");
        ok.finish().expect("exit 0");
        assert_eq!(
            std::fs::read_to_string(dir.join("ok.log")).expect("log"),
            "built\n"
        );
        let failed = Step::new(
            "sh",
            &["-c", "echo 'error[E0308]: mismatched types' >&2; exit 101"],
        )
        .spawn_logged(&dir.join("failed.log"))
        .expect("spawn");
        let err = failed.finish().unwrap_err();
        assert!(err.contains("exited with exit status: 101"), "{err}");
        assert!(err.contains("error[E0308]: mismatched types"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Dropped unfinished (setup failed), the step and what it started are stopped: here a
    /// shell and the `sleep` it waits for, as cargo and its rustc.
    #[test]
    fn a_dropped_background_step_stops_its_whole_group() {
        let dir = scratch("drop");
        let pid_file = dir.join("grandchild.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let step = Step::new("sh", &["-c", script.as_str()])
            .spawn_logged(&dir.join("drop.log"))
            .expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild: i32 = loop {
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break pid;
            }
            assert!(Instant::now() < deadline, "the shell never started sleep");
            std::thread::sleep(Duration::from_millis(20));
        };
        drop(step);
        // The grandchild is not ours to reap: it is gone once kill(pid, 0) fails (or it is a
        // zombie of init's, which /proc shows as state Z).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat"));
            let alive = stat.is_ok_and(|s| {
                s.rsplit_once(") ")
                    .is_some_and(|(_, rest)| !rest.starts_with('Z'))
            });
            if !alive {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "sleep {grandchild} outlived its dropped step"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

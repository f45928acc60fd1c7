//! `hvarch completions SHELL`: a script for each shell, one bash accepts.

mod common;

use common::{hvarch, text};

use std::process::Command;

#[test]
fn a_script_for_each_shell_naming_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let out = hvarch(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        for word in [
            "cmdline",
            "probe",
            "qmp",
            "run",
            "completions",
            "format",
            "all-machines",
        ] {
            assert!(script.contains(word), "{shell}: no {word:?} in:\n{script}");
        }
    }
    let out = hvarch(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses an unknown shell");
}

#[test]
fn bash_accepts_the_bash_script() {
    let dir = hvarch_tests::TempDir::new();
    let path = dir.join("hvarch.bash");
    let out = hvarch(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::write(&path, &out.stdout).expect("write the script");
    let check = Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .expect("run bash -n");
    assert!(check.status.success(), "bash -n: {}", text(&check.stderr));
    // Sourced, it registers a completion for `hvarch`.
    let sourced = Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p hvarch", path.display()))
        .output()
        .expect("run bash");
    assert!(sourced.status.success(), "{}", text(&sourced.stderr));
    assert!(
        text(&sourced.stdout).contains("hvarch"),
        "{}",
        text(&sourced.stdout)
    );
}

//! What hvarch's libraries log (through `tracing`), shown on stderr.
//!
//! By default only warnings from hvarch's crates; `-v` adds their progress (`info`: "QEMU
//! ready", "VM ended"), `-vv` the details (`debug`: QEMU's command line, the probe),
//! `-vvv` everything (`trace`). `RUST_LOG`, when set, decides instead (tracing-subscriber's
//! `EnvFilter` syntax, e.g. `RUST_LOG=hvarch_qmp=trace`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The crates whose logs `-v` shows (tracing targets start with the crate's name).
pub const CRATES: &[&str] = &[
    "hvarch",
    "hvarch_amd64",
    "hvarch_arch",
    "hvarch_arm64",
    "hvarch_devices",
    "hvarch_qmp",
];

/// The filter for `verbosity` `-v` flags: hvarch's crates at that level, nothing else.
pub fn directives(verbosity: u8) -> String {
    let level = match verbosity {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let crates: Vec<String> = CRATES.iter().map(|c| format!("{c}={level}")).collect();
    format!("off,{}", crates.join(","))
}

/// Installs the stderr subscriber. An invalid `RUST_LOG` is reported and ignored.
pub fn init(verbosity: u8) {
    let default = || EnvFilter::new(directives(verbosity));
    let filter = match std::env::var("RUST_LOG") {
        Ok(text) if !text.trim().is_empty() => {
            EnvFilter::builder().parse(&text).unwrap_or_else(|e| {
                eprintln!("hvarch: RUST_LOG ignored: {e}");
                default()
            })
        }
        _ => default(),
    };
    // Another subscriber can only be installed by a test harness: keep it.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(
            directives(0),
            "off,hvarch=warn,hvarch_amd64=warn,hvarch_arch=warn,hvarch_arm64=warn,\
             hvarch_devices=warn,hvarch_qmp=warn"
        );
        assert!(directives(1).contains(",hvarch=info,"));
        assert!(directives(2).ends_with(",hvarch_qmp=debug"));
        assert_eq!(directives(3), directives(200));
        for v in 0..4 {
            EnvFilter::builder()
                .parse(directives(v))
                .expect("valid directives");
        }
    }
}

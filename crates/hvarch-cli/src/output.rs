//! Standard output that a closed reader cannot crash, and how a subcommand fails.
//!
//! Rust ignores `SIGPIPE`, so a write to a pipe whose reader is gone (`hvarch … | head`)
//! fails with `EPIPE`, and `println!` panics on it. Subcommands write through [`Output`]
//! instead: `EPIPE` becomes [`CliError::OutputClosed`], which unwinds the subcommand
//! normally (its QMP connection closed, its QEMU reaped) and makes `hvarch` exit quietly
//! with status [`OUTPUT_CLOSED_STATUS`], 141: what a shell reports for a coreutils tool
//! killed by `SIGPIPE` (128 + 13), so `set -o pipefail` scripts see the same as with
//! `yes | head`.

use std::fmt;
use std::io::{self, Write};

/// The exit status when standard output is closed: 128 + `SIGPIPE`.
pub const OUTPUT_CLOSED_STATUS: u8 = 141;

/// Why a subcommand did not succeed.
#[derive(Debug, PartialEq, Eq)]
pub enum CliError {
    /// Standard output was closed by its reader: exit quietly with
    /// [`OUTPUT_CLOSED_STATUS`].
    OutputClosed,
    /// A failure to report on stderr as `hvarch: <message>` (exit status 1).
    Failed(String),
}

impl From<String> for CliError {
    fn from(message: String) -> CliError {
        CliError::Failed(message)
    }
}

impl From<&str> for CliError {
    fn from(message: &str) -> CliError {
        CliError::Failed(message.to_owned())
    }
}

impl CliError {
    /// The error of a failed write to standard output.
    pub fn from_write(error: &io::Error) -> CliError {
        if error.kind() == io::ErrorKind::BrokenPipe {
            CliError::OutputClosed
        } else {
            CliError::Failed(format!("cannot write to standard output: {error}"))
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::OutputClosed => f.write_str("standard output closed"),
            CliError::Failed(message) => f.write_str(message),
        }
    }
}

/// A subcommand's result.
pub type CliResult<T = ()> = Result<T, CliError>;

/// Standard output (or any writer, for tests), line by line, flushed after each write so
/// that a closed reader is noticed at once.
pub struct Output<W: Write = io::Stdout> {
    out: W,
}

impl Output {
    /// The process's standard output.
    pub fn stdout() -> Output {
        Output::new(io::stdout())
    }
}

impl<W: Write> Output<W> {
    /// Output to `out`.
    pub fn new(out: W) -> Output<W> {
        Output { out }
    }

    /// Writes `text` and a newline.
    pub fn line(&mut self, text: impl fmt::Display) -> CliResult {
        self.write_args(format_args!("{text}\n"))
    }

    /// Writes `bytes` as they are.
    pub fn bytes(&mut self, bytes: &[u8]) -> CliResult {
        self.out
            .write_all(bytes)
            .and_then(|()| self.out.flush())
            .map_err(|e| CliError::from_write(&e))
    }

    /// Writes formatted text (see [`outln!`](crate::outln)).
    pub fn write_args(&mut self, args: fmt::Arguments<'_>) -> CliResult {
        self.out
            .write_fmt(args)
            .and_then(|()| self.out.flush())
            .map_err(|e| CliError::from_write(&e))
    }
}

/// `println!` through an [`Output`]: `outln!(out, "x = {x}")?`.
#[macro_export]
macro_rules! outln {
    ($out:expr) => {
        $out.write_args(format_args!("\n"))
    };
    ($out:expr, $($arg:tt)*) => {
        $out.write_args(format_args!("{}\n", format_args!($($arg)*)))
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose reader is gone, or whose disk is full.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_reader_is_output_closed_and_other_errors_are_failures() {
        let mut out = Output::new(Failing(io::ErrorKind::BrokenPipe));
        assert_eq!(out.line("x"), Err(CliError::OutputClosed));
        assert_eq!(outln!(out, "{}", 1), Err(CliError::OutputClosed));
        assert_eq!(out.bytes(b"x"), Err(CliError::OutputClosed));
        let mut out = Output::new(Failing(io::ErrorKind::StorageFull));
        match out.line("x") {
            Err(CliError::Failed(m)) => assert!(m.starts_with("cannot write to standard output")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn lines_are_written_whole() {
        let mut buffer = Vec::new();
        let mut out = Output::new(&mut buffer);
        out.line("a b").expect("write");
        outln!(out, "{}-{}", 1, 2).expect("write");
        outln!(out).expect("write");
        out.bytes(b"raw").expect("write");
        assert_eq!(buffer, b"a b\n1-2\n\nraw");
    }
}

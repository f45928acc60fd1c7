//! The subcommands, one module each.

pub mod cmdline;
pub mod completions;
pub mod probe;
pub mod qmp;
pub mod run;

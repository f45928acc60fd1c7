//! The subcommands, one module each.

pub mod cmdline;
pub mod probe;
pub mod qmp;
pub mod run;

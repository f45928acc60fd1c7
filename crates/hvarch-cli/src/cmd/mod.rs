//! The subcommands, one module each (`run`, `qmp` and `probe` will join `cmdline`).

pub mod cmdline;

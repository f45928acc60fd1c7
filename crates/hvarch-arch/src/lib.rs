//! # hvarch-arch
//!
//! The arch-generic half of hvarch (work in progress): bridges and slot allocation.
#![deny(missing_docs)]

pub mod arch;
pub mod bridge;
pub mod error;
pub mod guest_arch;
pub mod kernel_params;
pub mod machine;
pub mod resources;
pub mod settings;

pub use error::{ArchError, Result};

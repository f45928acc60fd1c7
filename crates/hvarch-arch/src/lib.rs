//! # hvarch-arch
//!
//! The arch-generic half of hvarch (work in progress): bridges and slot allocation.
#![deny(missing_docs)]

pub mod bridge;
pub mod error;

pub use error::{ArchError, Result};

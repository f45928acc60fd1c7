//! hvarch-devices (work in progress).
#![deny(missing_docs)]

//! hvarch-qmp: a QMP client (work in progress).
#![deny(missing_docs)]

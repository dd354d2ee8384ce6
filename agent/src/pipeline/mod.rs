//! One build, end to end on local disk: clone → context → build → push.
pub mod clone;
pub mod context;
pub mod docker;

//! Socket helpers for the scenarios: thin wrappers over setsockopt/ioctl/TCP_INFO, and bounded polling
//! of kernel-visible socket state (`/proc/thread-self/net/tcp{,6}`).
//!
//! Split by concern; everything is re-exported here, so `sock::*` keeps working.

mod options;
mod plain;
mod raw;
mod repair;
mod state;

pub use self::{options::*, plain::*, raw::*, repair::*, state::*};

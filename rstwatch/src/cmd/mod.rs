//! The subcommands: `run` (the daemon), `trace`, `explain`; each runs the pipeline's stages
//! (`load` → `decode` → `classify` → `enrich` → `export`) through a `session`.

pub mod args;
pub mod explain;
pub mod run;
pub mod session;
pub mod trace;

//! Holdfast module configuration.
//!
//! A *module* is the unit of high availability for one application: its
//! [`ModuleConfig`] says which two nodes run it, how they watch each other
//! (heartbeats) and how its scripts are run. This crate produces it from:
//!
//! - the native TOML format, with [`parse_module`] / [`load_module`], and
//!   back with [`to_toml`];
//! - a SafeKit `userconfig.xml` (plus the cluster's `cluster.xml` for node
//!   addresses), with [`import_userconfig`], which reports everything it could
//!   not carry over as [`ImportWarning`]s.
//!
//! Both paths end in the same [`ModuleConfig::validate`], and every problem is
//! a [`ConfigError`] naming the file, line, column and field. The format is
//! documented for users in `docs/configuration.md`.
//!
//! Everything here is plain data other crates read, without a runtime:
//! [`checker`] settings (run by `holdfast-checkers`), load-balancing
//! [`Rule`]s and [`Mac`] addresses (programmed by `holdfast-network`).

pub mod checker;
mod error;
mod import;
pub mod model;
mod native;
mod validate;

pub use error::{ConfigError, InvalidChecker, ValidationError};
pub use import::{import_userconfig, ImportOptions, ImportWarning, Imported, NodeSource};
pub use model::*;
pub use native::{load_module, parse_module, to_toml};

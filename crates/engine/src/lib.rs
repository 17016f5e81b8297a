//! The container engine: the Docker Engine API over a unix socket and mutual TLS.
//!
//! Layers, from the network inwards: [`api`] (HTTP routes, Docker JSON types, streaming) →
//! [`core`] (typed operations, container table) → [`container`] (runtime launch, logs, I/O
//! fan-out), [`state`] (persisted records) and [`image`] (the image store). [`daemon`] wires them
//! to listeners and signals for the `rmachine-engine` binary, whose flags [`cli`] parses.
#![warn(missing_docs)]
// The `/info` document is one large `json!` literal.
#![recursion_limit = "256"]

pub mod api;
pub mod cli;
pub mod container;
pub mod core;
pub mod daemon;
pub mod events;
pub mod image;
pub mod recovery;
pub mod registry_config;
pub mod state;
pub mod sysinfo;
pub mod volume;

//! The synchronous container runtime: namespaces, overlayfs rootfs, pivot_root, exec; run as its
//! own process.
//!
//! The engine never forks containers itself: it writes a [`spec::RuntimeSpec`] into the
//! container's state directory and spawns `rmachine-runtime run DIR` (see [`spec`] for the whole
//! contract). This crate is also a library so the engine can share the spec types.
#![warn(missing_docs)]

pub mod spec;

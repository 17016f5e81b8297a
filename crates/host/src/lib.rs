//! The rmachine library: machine store, provisioning, certificates, SSH client, guest images,
//! env rendering.
//!
//! Everything a front end needs to manage machines lives here; the `rmachine` binary only
//! parses arguments and formats what these modules return. [`machine`] is the entry point: it
//! ties the [`store`], [`certs`], [`ssh`], [`image`] and [`engine_check`] modules to a driver
//! chosen in [`drivers`].
#![warn(missing_docs)]

pub mod certs;
pub mod context;
pub mod drivers;
pub mod engine_check;
pub mod env;
pub mod external;
pub mod image;
pub mod machine;
pub mod portagent;
pub mod scp;
pub mod sftpshare;
pub mod shares;
pub mod ssh;
pub mod store;
pub mod template;

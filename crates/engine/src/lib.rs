//! The container engine: the Docker Engine API over a unix socket and mutual TLS.

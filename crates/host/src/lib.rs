//! rmachine host library.

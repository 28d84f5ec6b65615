//! The OCI runtime library.

//! CRI `runtime.v1` API (placeholder until api.proto lands).

//! kiln-infer

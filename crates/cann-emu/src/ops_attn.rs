//! Attention and KV-cache operators.

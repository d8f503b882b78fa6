//! SPDY/3.1 (placeholder until the crate lands).

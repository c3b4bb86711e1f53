//! Test support (filled in by the foundation issue).

//! Feature unification for the workspace (a hand-kept "workspace hack").
//!
//! Cargo resolves features per selection of packages: `cargo build -p
//! backhaul-inference` and `cargo test --workspace` used to turn on slightly
//! different features of tokio, tower, chrono and friends, and every
//! difference recompiled mistral.rs (ten minutes on two cores). This crate has
//! no code; its manifest pins the union.
#![forbid(unsafe_code)]

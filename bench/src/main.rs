//! `backhaul-bench`: drives the inference benchmark (see
//! `docs/benchmarks/README.md`). One process loads mistral.rs in-process and
//! talks to already running servers (Backhaul's gRPC and HTTP surfaces,
//! `mistralrs serve`), taking turns between them so drift in machine load
//! falls on every target alike. Prints one JSON document on stdout.

#![forbid(unsafe_code)]

mod cpu;
mod inference;
mod stats;
mod targets;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = inference::Args::parse();
    let report = inference::run(args).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

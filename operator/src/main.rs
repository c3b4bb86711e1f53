//! `backhaul-operator`: see the library crate for what it does.

use anyhow::Context as _;
use backhaul_operator::config::{Cli, Command};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command, args } = Cli::parse();
    match command {
        Some(Command::Crd) => {
            print!(
                "{}",
                backhaul_operator::crd::crd_yaml().context("rendering the CRD")?
            );
            Ok(())
        }
        Some(Command::Run) | None => backhaul_operator::run(args)
            .await
            .context("operator failed"),
    }
}

//! `backhaul-operator`: see the library crate for what it does.

use anyhow::Context as _;
use backhaul_operator::config::{Cli, Command, PublishKeyCommand, read_signing_key};
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
        Some(Command::RouteSchema) => {
            print!("{}", backhaul_operator::publish::route_schema());
            Ok(())
        }
        Some(Command::PublishKey(PublishKeyCommand::Generate)) => {
            use ed25519_dalek::pkcs8::{EncodePrivateKey, spki::der::pem::LineEnding};
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).context("reading the system's random source")?;
            let pem = ed25519_dalek::SigningKey::from_bytes(&seed)
                .to_pkcs8_pem(LineEnding::LF)
                .context("encoding the key")?;
            print!("{}", pem.as_str());
            Ok(())
        }
        Some(Command::PublishKey(PublishKeyCommand::Public)) => {
            let path = args.publish_key_file.context(
                "publish-key public needs --publish-key-file (BACKHAUL_PUBLISH_KEY_FILE)",
            )?;
            let key = read_signing_key(&path)?;
            println!("{}", backhaul_operator::publish::public_key_base64(&key));
            Ok(())
        }
        Some(Command::Run) | None => backhaul_operator::run(args)
            .await
            .context("operator failed"),
    }
}

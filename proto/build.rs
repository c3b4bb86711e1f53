//! Compiles the inference proto with a vendored `protoc`, so building needs
//! no system protobuf install, and writes the descriptor set that server
//! reflection serves.
use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("backhaul_inference_v1_descriptor.bin"))
        .compile_with_config(config, &["backhaul/inference/v1/inference.proto"], &["."])?;
    Ok(())
}

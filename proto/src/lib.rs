//! Protobuf and gRPC definitions of the Backhaul inference API
//! (`backhaul.inference.v1`), generated at build time from
//! `backhaul/inference/v1/inference.proto` with a vendored `protoc`.
//!
//! Servers implement [`inference::v1::inference_server::Inference`]; clients
//! use [`inference::v1::inference_client::InferenceClient`]. The encoded file
//! descriptor set ([`FILE_DESCRIPTOR_SET`]) feeds gRPC server reflection.

pub mod inference {
    pub mod v1 {
        tonic::include_proto!("backhaul.inference.v1");
    }
}

/// Encoded `FileDescriptorSet` of the inference API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("backhaul_inference_v1_descriptor");

/// Fully qualified gRPC service name, as health checks and reflection name it.
pub const INFERENCE_SERVICE_NAME: &str = "backhaul.inference.v1.Inference";

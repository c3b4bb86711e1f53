//! Backhaul's inference server: one model, loaded with mistral.rs, served
//! over gRPC (`backhaul.inference.v1.Inference`, health, reflection) and an
//! OpenAI-compatible HTTP API in the same process.
//!
//! Every request takes one path, whichever API it came in on:
//!
//! ```text
//! gRPC / HTTP adapter ─► validate ─► admit ─► tokenize ─► engine ─► relay ─► adapter
//!   (grpc, http)        (validate) (admission) (engine)  (engine)  (relay)
//! ```
//!
//! - [`validate`] turns raw input into a [`validate::ValidatedRequest`],
//!   refusing prompts too long in bytes to fit ([`prompt_bound`]) before
//!   anything tokenizes them;
//! - [`admission`] bounds concurrent and queued work, refusing the rest at
//!   once (RESOURCE_EXHAUSTED / 429 with Retry-After), before the prompt
//!   is tokenized (once, [`service`]);
//! - [`engine`] submits to mistral.rs with a roomy channel that [`relay`]
//!   drains at once, so a slow client is cut off rather than stalling the
//!   batch, stop sequences never leak, and deadlines are honoured;
//! - [`error`] maps every failure to a gRPC status, an HTTP status and an
//!   OpenAI error body, with one bounded category for metrics;
//! - [`auth`] refuses API calls without a bearer token from
//!   `--api-key-file`, re-read when the file changes;
//! - [`connections`] serves each listener under connection limits and
//!   timeouts;
//! - [`server`] binds first, loads, serves, and drains on request.
//!
//! [`server::start`] returns a [`server::ServerHandle`] with the bound
//! addresses, a ready signal and drain/shutdown controls; the binary wires
//! it to signals.

#![forbid(unsafe_code)]

pub mod admission;
pub mod auth;
pub mod config;
pub mod connections;
pub mod engine;
pub mod error;
pub mod fill_progress;
pub mod grpc;
pub mod http;
pub mod hub_files;
pub mod json_scan;
pub mod metrics;
pub mod model_source;
pub mod prompt_bound;
pub mod relay;
pub mod response_format;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod tool_calls;
pub mod validate;

pub use config::Config;
pub use engine::{Engine, LoadError, ModelInfo};
pub use error::InferenceError;
pub use server::{ModelSource, ServeError, ServerHandle, start};

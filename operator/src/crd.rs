//! The `ModelDeployment` custom resource (`backhaul.dev/v1alpha1`).
//!
//! The schema the API server enforces is generated from these types: OpenAPI
//! constraints come from `#[schemars(...)]`, CEL rules from `#[x_kube(...)]`.
//! Whatever the API server can reject is rejected there, so `kubectl apply` of a
//! bad object fails naming the field; `validate.rs` re-checks the same rules
//! (an older CRD may be installed) and the ones that need the operator's flags.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// API group of every Backhaul resource.
pub const GROUP: &str = "backhaul.dev";
/// Finalizer that keeps an object until its routes are withdrawn from the Worker.
pub const FINALIZER: &str = "backhaul.dev/unpublish";
/// Annotation that lets deletion proceed without withdrawing routes.
pub const SKIP_UNPUBLISH_ANNOTATION: &str = "backhaul.dev/skip-unpublish";
/// Why `format: gguf` with `quantization` is refused (by the CRD and by
/// `validate.rs`): the inference server refuses `--isq` for GGUF weights at
/// load, so the pod would crash-loop.
pub const GGUF_QUANTIZATION_MESSAGE: &str = "quantization (in-situ, --isq) applies to format plain only: GGUF weights are already quantized; remove quantization or pick a GGUF file of the quantization you want";

/// A model served from GPU Deployments in one or more regions and published
/// to the Backhaul routing Worker.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "backhaul.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    namespaced,
    shortname = "md",
    category = "backhaul",
    status = "ModelDeploymentStatus",
    derive = "PartialEq",
    doc = "A model served from GPU Deployments in one or more regions and published to the Backhaul routing Worker.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.model.servedName"),
    printcolumn(
        name = "Regions",
        type_ = "string",
        description = "regions with ready replicas / regions",
        json_path = ".status.readyRegions"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Published",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Published\")].status"
    ),
    printcolumn(
        name = "Fleet",
        type_ = "string",
        description = "regions in the Worker's table for this model, from every cluster",
        json_path = ".status.fleetRegions"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Child names start with the name (`<name>-<region>-<hash>`, see
    // build::child_name) and Services need a DNS-1035 label; the route path
    // also caps names at 63 characters (docs/publication.md).
    validation = Rule::new("size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')")
        .message("metadata.name must be a DNS-1035 label (at most 63 characters, starting with a letter): it names the regional Services")
)]
#[x_kube(validation = Rule::new(TENSOR_PARALLEL_RULE).message(TENSOR_PARALLEL_MESSAGE).field_path(".resources.gpusPerReplica"))]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// The model to serve and how clients name it.
    pub model: ModelSpec,
    /// Inference engine settings shared by every replica.
    #[serde(default)]
    pub engine: EngineSpec,
    /// Resources of one replica.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Regions to run replicas in. Names are unique; each region gets its own
    /// Deployment, Service and route.
    #[schemars(length(min = 1, max = 32))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub regions: Vec<RegionSpec>,
    /// How the Worker routes requests to this model.
    #[serde(default)]
    pub routing: RoutingSpec,
    /// Inference server image. When unset, the operator's defaults: its
    /// `--inference-image-cuda` (the CUDA build) when `resources.gpusPerReplica`
    /// is above 0, its `--inference-image` (the CPU build) when it is 0. An image
    /// set here is used for both, so it must match: GPU pods run `--device cuda`,
    /// which a CPU build refuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

/// Tensor parallelism splits every layer evenly over the GPUs, which
/// mistral.rs's NCCL path needs to be a power of two.
pub const TENSOR_PARALLEL_RULE: &str = "!has(self.resources) || !has(self.resources.gpusPerReplica) || self.resources.gpusPerReplica in [0, 1, 2, 4, 8, 16, 32, 64] || (has(self.engine) && has(self.engine.parallelism) && self.engine.parallelism == 'layers')";
/// What a user sees when [`TENSOR_PARALLEL_RULE`] fails.
pub const TENSOR_PARALLEL_MESSAGE: &str = "tensor parallelism (engine.parallelism: tensor, the default) needs gpusPerReplica to be a power of two (1, 2, 4, 8, 16, 32 or 64); set engine.parallelism: layers to place whole layers on another count of GPUs";

/// Weight format of the model.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// GGUF files (name them in `ggufFiles`).
    Gguf,
    /// A Hugging Face style directory of safetensors and config files.
    Plain,
}

/// The model to serve.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.format != 'gguf' || (has(self.ggufFiles) && size(self.ggufFiles) > 0)").message("ggufFiles must name at least one file when format is gguf").field_path(".ggufFiles"))]
#[x_kube(validation = Rule::new("self.format != 'plain' || !has(self.ggufFiles) || size(self.ggufFiles) == 0").message("ggufFiles is only valid with format gguf").field_path(".ggufFiles"))]
#[x_kube(validation = Rule::new("self.format != 'gguf' || !has(self.quantization)").message(GGUF_QUANTIZATION_MESSAGE).field_path(".quantization"))]
#[x_kube(validation = Rule::new("!has(self.cache) || self.source.startsWith('hf://')").message(CACHE_SOURCE_MESSAGE).field_path(".cache"))]
pub struct ModelSpec {
    /// Where the weights are: a path inside the image or the model volume
    /// (`/models/...`), or `hf://org/repo[@revision]` to download from the Hugging Face Hub.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/') || self.matches('^hf://[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$')").message("source must be an absolute path or hf://org/repo[@revision]"))]
    pub source: String,
    /// Weight format.
    pub format: ModelFormat,
    /// GGUF file names inside `source` (required for `gguf`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 255)))]
    pub gguf_files: Vec<String>,
    /// The name clients put in `model` (1-128 characters of `[A-Za-z0-9._:/-]`).
    #[schemars(regex(pattern = r"^[A-Za-z0-9._:/-]{1,128}$"))]
    pub served_name: String,
    /// Path of a chat template file (in the image or the model volume) overriding the model's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub chat_template: Option<String>,
    /// In-situ quantization applied at load (mistral.rs ISQ type, e.g. `Q4K`, `Q8_0`);
    /// format `plain` only: GGUF weights are already quantized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[A-Za-z0-9_]{1,16}$"))]
    pub quantization: Option<String>,
    /// Secret key holding a Hugging Face Hub token, passed as `HF_TOKEN`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_token_secret: Option<SecretKeyRef>,
    /// A PersistentVolumeClaim holding models, mounted read-only at `/models`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<ModelVolume>,
    /// A weight cache per region for an `hf://` source: a PersistentVolumeClaim
    /// filled once by a download Job, then mounted read-only by every replica,
    /// which starts only once the fill is complete. A new source (another
    /// revision) fills a new cache before the replicas roll onto it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ModelCacheSpec>,
}

/// What `spec.model.cache` must be, in words.
pub const CACHE_SOURCE_MESSAGE: &str =
    "cache needs an hf:// source: it holds what its fill downloads from the Hub";

/// Each region's weight cache.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCacheSpec {
    /// Size of each region's claim: the weights, with room for one file's
    /// partial download (e.g. `160Gi` for a 70B model in bf16).
    pub size: Quantity,
    /// StorageClass of the claims; the cluster's default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
    /// `ReadWriteMany` (the default: replicas on any node of the region share
    /// one fill, e.g. NFS, CephFS, EFS, Filestore) or `ReadWriteOnce` (the
    /// fill and every replica on one node).
    #[serde(default)]
    pub access_mode: CacheAccessMode,
}

/// Access mode of a weight cache's claim.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
pub enum CacheAccessMode {
    /// Mounted by pods on any number of nodes.
    #[default]
    ReadWriteMany,
    /// Mounted by pods on one node at a time.
    ReadWriteOnce,
}

/// A key of a Secret in the object's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_secret_key() -> String {
    "token".into()
}

/// A volume holding model weights.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelVolume {
    /// Name of a PersistentVolumeClaim in the object's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub claim_name: String,
}

/// Numeric type the weights are computed in.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// The engine picks (bf16 where the GPU supports it).
    #[default]
    Auto,
    /// bfloat16.
    Bf16,
    /// float16.
    F16,
    /// float32.
    F32,
}

impl Dtype {
    /// The inference server's `--dtype` value.
    pub fn as_flag(self) -> &'static str {
        match self {
            Dtype::Auto => "auto",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
            Dtype::F32 => "f32",
        }
    }
}

/// Inference engine settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EngineSpec {
    /// Most sequences decoded at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 4096))]
    pub max_num_seqs: Option<u32>,
    /// Context length (prompt plus generated tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_seq_len: Option<u32>,
    /// PagedAttention KV cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paged_attention: Option<PagedAttentionSpec>,
    /// Compute dtype.
    #[serde(default)]
    pub dtype: Dtype,
    /// Requests admitted at once per replica; more wait in the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_in_flight: Option<u32>,
    /// Requests waiting for admission per replica; beyond this they get 429.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 1_000_000))]
    pub max_queue: Option<u32>,
    /// Seconds a stopping replica lets in-flight requests finish.
    #[serde(default = "default_drain_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub drain_timeout_seconds: u32,
    /// How a replica with several GPUs (`resources.gpusPerReplica` > 1)
    /// splits the model; ignored with one GPU or none.
    #[serde(default)]
    pub parallelism: Parallelism,
}

/// How one replica's GPUs share the model.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Parallelism {
    /// Tensor parallelism over NCCL: every layer is split over all the
    /// GPUs, which work at once. Needs a power-of-two GPU count.
    #[default]
    Tensor,
    /// Whole layers per GPU, one GPU busy at a time: any GPU count, less
    /// speed. For GPUs without a fast interconnect, or odd counts.
    Layers,
}

impl Parallelism {
    /// The inference server's `--parallelism` value.
    pub fn as_flag(self) -> &'static str {
        match self {
            Parallelism::Tensor => "tensor",
            Parallelism::Layers => "layers",
        }
    }
}

fn default_drain_seconds() -> u32 {
    30
}

impl Default for EngineSpec {
    fn default() -> Self {
        Self {
            max_num_seqs: None,
            max_seq_len: None,
            paged_attention: None,
            dtype: Dtype::default(),
            max_in_flight: None,
            max_queue: None,
            drain_timeout_seconds: default_drain_seconds(),
            parallelism: Parallelism::default(),
        }
    }
}

/// PagedAttention settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PagedAttentionSpec {
    /// Use PagedAttention (CUDA only).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Fraction of GPU memory the KV cache may take, in (0, 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.01, max = 1.0))]
    pub gpu_memory_utilization: Option<f64>,
}

fn default_true() -> bool {
    true
}

/// Resources of one replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// `nvidia.com/gpu` per replica (0 runs on CPU).
    #[serde(default = "default_gpus")]
    #[schemars(range(min = 0, max = 64))]
    pub gpus_per_replica: u32,
    /// Required value of the node label `nvidia.com/gpu.product` (e.g. `NVIDIA-H100-80GB-HBM3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub gpu_product: Option<String>,
    /// CPU request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request and limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

fn default_gpus() -> u32 {
    1
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            gpus_per_replica: default_gpus(),
            gpu_product: None,
            cpu: None,
            memory: None,
        }
    }
}

/// One region serving the model.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegionSpec {
    /// Region name, matched to nodes by the label `topology.kubernetes.io/region`.
    #[schemars(
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        length(min = 1, max = 40)
    )]
    pub name: String,
    /// Replicas in this region (0 keeps the region but withdraws its route).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Where the region is, for nearest-region routing.
    pub location: Location,
    /// Public base URL of the region's inference HTTP surface, as the Worker reaches it.
    /// `https`, or `http` only for loopback hosts.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("isURL(self) && url(self).getHostname() != '' && (url(self).getScheme() == 'https' || (url(self).getScheme() == 'http' && url(self).getHostname() in ['127.0.0.1', 'localhost', '::1']))").message("endpoint must be an https URL (http only for 127.0.0.1, localhost or [::1])"))]
    pub endpoint: String,
    /// Extra node selector; a `topology.kubernetes.io/region` key here overrides the region match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Extra tolerations for this region's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub tolerations: Vec<Toleration>,
}

fn default_replicas() -> i32 {
    1
}

/// Geographic location in degrees.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Location {
    /// Latitude in [-90, 90].
    #[schemars(range(min = -90.0, max = 90.0))]
    pub latitude: f64,
    /// Longitude in [-180, 180].
    #[schemars(range(min = -180.0, max = 180.0))]
    pub longitude: f64,
}

/// How the Worker routes requests.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoutingSpec {
    /// Estimated prompt tokens from which a request is heavy (0: every request is heavy).
    #[serde(default = "default_heavy_prompt_tokens")]
    #[schemars(range(min = 0))]
    pub heavy_prompt_tokens: u32,
    /// `max_tokens` from which a request is heavy (0: every request is heavy).
    #[serde(default = "default_heavy_max_tokens")]
    #[schemars(range(min = 0))]
    pub heavy_max_tokens: u32,
    /// Workers AI model answering light requests at the edge; unset: every request goes to a region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub edge_model: Option<String>,
    /// Total budget of one upstream attempt, in seconds.
    #[serde(default = "default_request_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub request_timeout_seconds: u32,
    /// An attempt without response headers by then fails over, in seconds.
    #[serde(default = "default_first_byte_timeout")]
    #[schemars(range(min = 1, max = 3600))]
    pub first_byte_timeout_seconds: u32,
    /// Most regions one request tries.
    #[serde(default = "default_failover_attempts")]
    #[schemars(range(min = 1, max = 32))]
    pub failover_attempts: u32,
    /// Seconds a published route lives unless republished (heartbeat every third of it).
    #[serde(default = "default_ttl")]
    #[schemars(range(min = 10, max = 3600))]
    pub ttl_seconds: u32,
}

fn default_heavy_prompt_tokens() -> u32 {
    1024
}
fn default_heavy_max_tokens() -> u32 {
    512
}
fn default_request_timeout() -> u32 {
    120
}
fn default_first_byte_timeout() -> u32 {
    15
}
fn default_failover_attempts() -> u32 {
    3
}
fn default_ttl() -> u32 {
    60
}

impl Default for RoutingSpec {
    fn default() -> Self {
        Self {
            heavy_prompt_tokens: default_heavy_prompt_tokens(),
            heavy_max_tokens: default_heavy_max_tokens(),
            edge_model: None,
            request_timeout_seconds: default_request_timeout(),
            first_byte_timeout_seconds: default_first_byte_timeout(),
            failover_attempts: default_failover_attempts(),
            ttl_seconds: default_ttl(),
        }
    }
}

/// Observed state. Each operator writes only the `regions` entries it serves
/// (server-side apply, one field manager per region set); the top-level fields
/// are an aggregate every operator computes identically from all entries.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Degraded` and `Published`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Regions with ready replicas / regions in the spec, e.g. `2/3`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_regions: Option<String>,
    /// One entry per region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub regions: Vec<RegionStatus>,
    /// Every region of this model's fleet as the routing Worker's table shows
    /// it, this cluster's and other clusters' (the Worker's `GET
    /// /admin/v1/fleet`, read every `--fleet-poll-interval`); at most 64.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub fleet: Vec<FleetRegionStatus>,
    /// The regions of `fleet` with a live route, then those expired, marked:
    /// e.g. `eu-west,us-east(expired)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet_regions: Option<String>,
}

/// Observed state of one region.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegionStatus {
    /// Region name.
    pub name: String,
    /// The `metadata.generation` this entry describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// Desired replicas.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Endpoint published for this region.
    #[serde(default)]
    pub endpoint: String,
    /// `Ready`, `Progressing`, `Degraded` or `ScaledToZero`.
    #[serde(default)]
    pub phase: String,
    /// Why the region is in its phase (e.g. `InsufficientGPU`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The region's weight cache (`spec.model.cache`): the one being filled
    /// or, once it is Ready, served from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheStatus>,
    /// Whether the Worker holds a route for this region.
    #[serde(default)]
    pub published: bool,
    /// When the route's current content was first published (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<String>,
    /// Last publication error, cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_error: Option<String>,
    /// The operator serving this region has no Worker to publish to.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub publication_disabled: bool,
}

/// One region's weight cache.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CacheStatus {
    /// The PersistentVolumeClaim (and its fill Job).
    pub claim_name: String,
    /// The `hf://` source it holds.
    pub source: String,
    /// `Pending`, `Downloading`, `Ready` or `Failed`.
    pub phase: String,
    /// Bytes downloaded and verified so far (while Downloading, and once Ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downloaded_bytes: Option<i64>,
    /// Bytes the model's files take.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Fill attempts that failed (each retried with backoff until the limit).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed_attempts: i32,
    /// Detail: progress, or why the fill failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn is_zero(n: &i32) -> bool {
    *n == 0
}

/// One region of this model's fleet as the routing Worker's table shows it
/// (`GET /admin/v1/fleet`, docs/publication.md "The fleet view"): this
/// cluster's regions and those other clusters' operators publish.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FleetRegionStatus {
    /// Region name.
    pub region: String,
    /// Namespace of the ModelDeployment that publishes it, in its own cluster.
    pub namespace: String,
    /// Name of that ModelDeployment.
    pub name: String,
    /// The publisher key that last wrote the route: which cluster's operator.
    pub key_id: String,
    /// Ready replicas the route reports.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The route has expired: its operator stopped renewing it (the operator
    /// or its cluster is gone), and the Worker no longer routes there.
    #[serde(default)]
    pub expired: bool,
    /// When the route expired (RFC 3339, the Worker's clock); set only on
    /// expired entries, because a live route's expiry moves with every lease
    /// renewal and would rewrite status that often.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at: Option<String>,
}

/// The CRD as YAML, exactly as committed in `crds/modeldeployment.yaml`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    Ok(format!(
        "# Generated by `backhaul-operator crd`; do not edit.\n{}",
        serde_yaml::to_string(&ModelDeployment::crd())?
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_crd_matches_generated() {
        let committed = include_str!("../../crds/modeldeployment.yaml");
        let generated = crd_yaml().unwrap();
        assert!(
            committed == generated,
            "crds/modeldeployment.yaml is stale: run `make generate`"
        );
    }

    #[test]
    fn schema_carries_cel_rules_and_list_keys() {
        let yaml = crd_yaml().unwrap();
        assert!(yaml.contains("x-kubernetes-validations"));
        assert!(yaml.contains("x-kubernetes-list-map-keys"));
        assert!(yaml.contains("endpoint must be an https URL"));
        assert!(yaml.contains("shortNames"));
    }

    #[test]
    fn gguf_with_quantization_is_refused_by_the_schema() {
        let crd = serde_json::to_value(ModelDeployment::crd()).unwrap();
        let model = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["model"];
        let rule = model["x-kubernetes-validations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["fieldPath"] == ".quantization")
            .expect("a rule on .quantization");
        assert_eq!(
            rule["rule"],
            "self.format != 'gguf' || !has(self.quantization)"
        );
        assert_eq!(rule["message"], GGUF_QUANTIZATION_MESSAGE);
    }
}

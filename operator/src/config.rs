//! Command line and environment: one `clap` declaration, every flag with an
//! `env` twin, turned into the [`OperatorConfig`] the library runs on.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};
use url::Url;

/// Backhaul's Kubernetes operator: ModelDeployments to regional GPU Deployments
/// and routes on the Backhaul Worker.
#[derive(Parser, Debug)]
#[command(name = "backhaul-operator", version, about)]
pub struct Cli {
    /// What to do; `run` when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Operator settings (for `run`).
    #[command(flatten)]
    pub args: Args,
}

/// Subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the ModelDeployment CustomResourceDefinition as YAML.
    Crd,
    /// Run the operator (the default).
    Run,
}

/// Log output format.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Operator settings.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Inference server image (CPU build) for ModelDeployments with
    /// `gpusPerReplica: 0` that set no `spec.image`.
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_INFERENCE_IMAGE",
        default_value = "ghcr.io/backhaul-dev/backhaul-inference:0.1.0"
    )]
    pub inference_image: String,
    /// Inference server image (CUDA build) for ModelDeployments with
    /// `gpusPerReplica` above 0 that set no `spec.image`: their pods run
    /// `--device cuda`, which the CPU build refuses.
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_INFERENCE_IMAGE_CUDA",
        default_value = "ghcr.io/backhaul-dev/backhaul-inference:0.1.0-cuda"
    )]
    pub inference_image_cuda: String,
    /// Base URL of the routing Worker; publication is disabled when unset.
    #[arg(long, global = true, env = "BACKHAUL_WORKER_URL")]
    pub worker_url: Option<Url>,
    /// Shared publication secret (prefer the environment variable or --publish-secret-file).
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_PUBLISH_SECRET",
        hide_env_values = true
    )]
    pub publish_secret: Option<String>,
    /// File holding the shared publication secret (trailing newline ignored).
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_PUBLISH_SECRET_FILE",
        conflicts_with = "publish_secret"
    )]
    pub publish_secret_file: Option<PathBuf>,
    /// Seconds one request to the Worker may take.
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_PUBLISH_TIMEOUT_SECONDS",
        default_value_t = 5
    )]
    pub publish_timeout_seconds: u64,
    /// Regions this operator's cluster serves (comma separated); all when empty.
    #[arg(long, global = true, env = "BACKHAUL_REGIONS", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, global = true, env = "BACKHAUL_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Address of the /metrics, /healthz and /readyz server.
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_METRICS_ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_addr: SocketAddr,
    /// Hold a coordination.k8s.io Lease so only one replica reconciles.
    #[arg(long, global = true, env = "BACKHAUL_LEADER_ELECTION")]
    pub leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_LEASE_NAME",
        default_value = "backhaul-operator"
    )]
    pub lease_name: String,
    /// Namespace of the leader election Lease (the pod's namespace).
    #[arg(long, global = true, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease and in Events (the pod name).
    #[arg(long, global = true, env = "POD_NAME")]
    pub identity: Option<String>,
    /// ModelDeployments reconciled at once. Bounded so that a burst of objects
    /// (a restart with thousands of them) does not flood the API server with
    /// more concurrent applies than it can answer before timing out.
    #[arg(long, global = true, env = "BACKHAUL_MAX_CONCURRENT_RECONCILES", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Log format.
    #[arg(long, global = true, env = "BACKHAUL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The secret file could not be read.
    #[error("reading publish secret file {path}: {source}")]
    SecretFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A Worker URL without a secret would send unsigned (rejected) requests.
    #[error(
        "--worker-url is set but no publish secret (BACKHAUL_PUBLISH_SECRET or --publish-secret-file)"
    )]
    MissingSecret,
    /// The secret is empty.
    #[error("the publish secret is empty")]
    EmptySecret,
}

/// Where and how to publish routes.
#[derive(Clone)]
pub struct PublishConfig {
    /// Worker base URL.
    pub worker_url: Url,
    /// Shared HMAC secret.
    pub secret: Vec<u8>,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for PublishConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("PublishConfig")
            .field("worker_url", &self.worker_url.as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What the reconciler needs to know about its deployment.
#[derive(Clone, Debug)]
pub struct OperatorConfig {
    /// Default inference image of CPU pods (`gpusPerReplica: 0`).
    pub inference_image: String,
    /// Default inference image of GPU pods (`gpusPerReplica` > 0).
    pub inference_image_cuda: String,
    /// Regions served; `None` serves every region.
    pub regions: Option<BTreeSet<String>>,
    /// Publication, `None` when disabled.
    pub publish: Option<PublishConfig>,
    /// Namespace to watch; all when `None`.
    pub watch_namespace: Option<String>,
    /// Identity in Events and the Lease.
    pub identity: String,
    /// ModelDeployments reconciled at once.
    pub max_concurrent_reconciles: u16,
}

impl OperatorConfig {
    /// Builds the runtime configuration from parsed flags.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let Args {
            inference_image,
            inference_image_cuda,
            worker_url,
            publish_secret,
            publish_secret_file,
            publish_timeout_seconds,
            regions,
            watch_namespace,
            metrics_addr: _,
            leader_election: _,
            lease_name: _,
            lease_namespace: _,
            identity,
            max_concurrent_reconciles,
            log_format: _,
        } = args;
        let secret = match (publish_secret, publish_secret_file) {
            (Some(s), _) => Some(s.trim_end().as_bytes().to_vec()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::SecretFile {
                        path: path.clone(),
                        source,
                    })?
                    .trim_end()
                    .as_bytes()
                    .to_vec(),
            ),
            (None, None) => None,
        };
        let publish = match (worker_url, secret) {
            (None, _) => None,
            (Some(_), None) => return Err(ConfigError::MissingSecret),
            (Some(_), Some(s)) if s.is_empty() => return Err(ConfigError::EmptySecret),
            (Some(url), Some(secret)) => Some(PublishConfig {
                worker_url: url.clone(),
                secret,
                timeout: Duration::from_secs(*publish_timeout_seconds),
            }),
        };
        let regions: BTreeSet<String> = regions
            .iter()
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect();
        Ok(Self {
            inference_image: inference_image.clone(),
            inference_image_cuda: inference_image_cuda.clone(),
            regions: (!regions.is_empty()).then_some(regions),
            publish,
            watch_namespace: watch_namespace.clone(),
            identity: identity
                .clone()
                .unwrap_or_else(|| format!("backhaul-operator-{}", std::process::id())),
            max_concurrent_reconciles: *max_concurrent_reconciles,
        })
    }

    /// The image of a ModelDeployment that sets no `spec.image`: the CUDA
    /// build when its pods get GPUs, the CPU build otherwise.
    pub fn default_image(&self, gpus_per_replica: u32) -> &str {
        if gpus_per_replica > 0 {
            &self.inference_image_cuda
        } else {
            &self.inference_image
        }
    }

    /// Whether this operator manages `region`.
    pub fn serves(&self, region: &str) -> bool {
        self.regions.as_ref().is_none_or(|r| r.contains(region))
    }

    /// Field manager for status writes: operators serving different region
    /// sets own different `status.regions` entries, so they must not share one.
    pub fn status_field_manager(&self) -> String {
        match &self.regions {
            None => crate::apply::FIELD_MANAGER.to_owned(),
            Some(regions) => {
                let joined = regions.iter().cloned().collect::<Vec<_>>().join(",");
                let name = format!("{}/{joined}", crate::apply::FIELD_MANAGER);
                if name.len() <= 128 {
                    name
                } else {
                    format!(
                        "{}/{}",
                        crate::apply::FIELD_MANAGER,
                        crate::build::short_hash(&joined)
                    )
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("backhaul-operator").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"))
    }

    #[test]
    fn flags_work_before_and_after_run() {
        for argv in [
            &[
                "run",
                "--regions",
                "us-east,eu-west",
                "--watch-namespace",
                "ml",
            ][..],
            &[
                "--regions",
                "us-east,eu-west",
                "run",
                "--watch-namespace",
                "ml",
            ],
            &["--regions", "us-east,eu-west", "--watch-namespace", "ml"],
        ] {
            let cli = parse(argv);
            assert!(matches!(cli.command, Some(Command::Run) | None), "{argv:?}");
            assert_eq!(cli.args.regions, ["us-east", "eu-west"], "{argv:?}");
            assert_eq!(cli.args.watch_namespace.as_deref(), Some("ml"), "{argv:?}");
        }
        assert!(matches!(parse(&["crd"]).command, Some(Command::Crd)));
        let err = Cli::try_parse_from(["backhaul-operator", "run", "--no-such-flag"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn gpu_pods_default_to_the_cuda_image_and_cpu_pods_to_the_cpu_one() {
        // Out of the box: the published CPU and CUDA builds of this version
        // (read from the declaration: the environment may set the flags).
        use clap::CommandFactory;
        let command = Cli::command();
        let default = |id: &str| {
            let arg = command
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no --{id}"));
            arg.get_default_values()[0].to_string_lossy().into_owned()
        };
        assert_eq!(
            default("inference_image"),
            "ghcr.io/backhaul-dev/backhaul-inference:0.1.0"
        );
        assert_eq!(
            default("inference_image_cuda"),
            "ghcr.io/backhaul-dev/backhaul-inference:0.1.0-cuda"
        );
        let config = OperatorConfig::from_args(
            &parse(&[
                "--inference-image",
                "registry.example.com/inference:cpu",
                "--inference-image-cuda",
                "registry.example.com/inference:gpu",
            ])
            .args,
        )
        .unwrap();
        assert_eq!(
            config.default_image(8),
            "registry.example.com/inference:gpu"
        );
        assert_eq!(
            config.default_image(0),
            "registry.example.com/inference:cpu"
        );
    }
}

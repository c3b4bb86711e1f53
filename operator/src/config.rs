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
    /// Print the JSON Schema of a published route (docs/schemas/route.schema.json).
    RouteSchema,
    /// Make or inspect this cluster's Ed25519 publisher key.
    #[command(subcommand)]
    PublishKey(PublishKeyCommand),
    /// Run the operator (the default).
    Run,
}

/// `publish-key` subcommands.
#[derive(Subcommand, Debug)]
pub enum PublishKeyCommand {
    /// Print a new private key (PKCS#8 PEM) on stdout.
    Generate,
    /// Print the base64 public key of --publish-key-file: its `publicKey` in
    /// the Worker's BACKHAUL_PUBLISHERS.
    Public,
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
    /// This cluster's Ed25519 private key (PKCS#8 PEM, as `openssl genpkey
    /// -algorithm ed25519` or `publish-key generate` writes it); signs every
    /// request to the Worker.
    #[arg(long, global = true, env = "BACKHAUL_PUBLISH_KEY_FILE")]
    pub publish_key_file: Option<PathBuf>,
    /// The key's id in the Worker's BACKHAUL_PUBLISHERS (sent as X-Backhaul-Key-Id).
    #[arg(long, global = true, env = "BACKHAUL_PUBLISH_KEY_ID")]
    pub publish_key_id: Option<String>,
    /// Seconds one request to the Worker may take.
    #[arg(
        long,
        global = true,
        env = "BACKHAUL_PUBLISH_TIMEOUT_SECONDS",
        default_value_t = 5
    )]
    pub publish_timeout_seconds: u64,
    /// Requests to the Worker in flight at once (route PUTs and DELETEs and the
    /// lease). Reconciles never wait for them; a burst (a restart with
    /// thousands of routes to send) drains at this many at a time.
    #[arg(long, global = true, env = "BACKHAUL_PUBLISH_CONCURRENCY", default_value_t = 8,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub publish_concurrency: u16,
    /// Seconds between reads of the Worker's fleet view (`GET /admin/v1/fleet`,
    /// with If-None-Match, so an unchanged one costs a 304), which each
    /// ModelDeployment's `status.fleet` shows: other clusters' regions appear,
    /// or show as expired, within this plus their routes' TTL.
    #[arg(long, global = true, env = "BACKHAUL_FLEET_POLL_INTERVAL",
          default_value_t = crate::fleet::DEFAULT_POLL_INTERVAL_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..=crate::fleet::MAX_POLL_INTERVAL_SECONDS))]
    pub fleet_poll_interval: u64,
    /// Regions this operator's cluster serves (comma separated); all when empty.
    #[arg(long, global = true, env = "BACKHAUL_REGIONS", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Watch only this namespace; all namespaces when unset.
    #[arg(long, global = true, env = "BACKHAUL_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// A Hugging Face Hub mirror or Hub-compatible server for `hf://`
    /// models, given to every inference pod and weight cache fill as
    /// `HF_ENDPOINT`; the public Hub when unset.
    #[arg(long, global = true, env = "BACKHAUL_HUB_ENDPOINT")]
    pub hub_endpoint: Option<Url>,
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
    /// Unset or empty: the host name and a random suffix, unique to this
    /// process ([`default_identity`]).
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
    /// OpenTelemetry trace export (off unless --otlp-endpoint is set).
    #[command(flatten)]
    pub otlp: backhaul_telemetry::OtlpArgs,
}

/// Errors reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The key file could not be read.
    #[error("reading publish key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The key file is not an Ed25519 PKCS#8 PEM private key.
    #[error("publish key file {path} is not an Ed25519 private key in PKCS#8 PEM: {message}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A Worker URL without a key would send unsigned (rejected) requests.
    #[error(
        "--worker-url is set but --publish-key-file (BACKHAUL_PUBLISH_KEY_FILE) or --publish-key-id (BACKHAUL_PUBLISH_KEY_ID) is not"
    )]
    MissingKey,
    /// The key id is not `[A-Za-z0-9_-]{1,64}`.
    #[error("--publish-key-id {0:?} must be 1-64 characters of [A-Za-z0-9_-]")]
    BadKeyId(String),
}

/// Reads an Ed25519 private key from a PKCS#8 PEM file.
pub fn read_signing_key(path: &std::path::Path) -> Result<ed25519_dalek::SigningKey, ConfigError> {
    use ed25519_dalek::pkcs8::DecodePrivateKey;
    let pem = std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
        path: path.to_owned(),
        source,
    })?;
    ed25519_dalek::SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| ConfigError::BadKey {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn valid_key_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The identity of a process started without one: `<host name>_<8 random
/// hex digits>`, as controller-runtime's leader election does
/// (`<hostname>_<uuid>`).
///
/// Unique, because the identity is what the Lease compares: two candidates
/// with the same one would both read the Lease as theirs and both lead (as
/// two containers without `POD_NAME`, each process 1 in its own PID
/// namespace, did with the former `backhaul-operator-<pid>`). The host name
/// (the pod's name in a pod) keeps it readable.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "backhaul-operator".to_owned());
    let mut suffix = [0u8; 4];
    // Without the system's random source, fall back on what differs between
    // processes on one host: the PID (and the time, for PID namespaces).
    if getrandom::fill(&mut suffix).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        suffix = (std::process::id() ^ nanos).to_be_bytes();
    }
    format!("{host}_{}", hex::encode(suffix))
}

/// Where and how to publish routes.
#[derive(Clone)]
pub struct PublishConfig {
    /// Worker base URL.
    pub worker_url: Url,
    /// The key id (`X-Backhaul-Key-Id`).
    pub key_id: String,
    /// This cluster's Ed25519 signing key.
    pub key: ed25519_dalek::SigningKey,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How often the fleet view is read (`--fleet-poll-interval`).
    pub fleet_poll_interval: Duration,
    /// Requests in flight at once (`--publish-concurrency`).
    pub concurrency: usize,
}

impl std::fmt::Debug for PublishConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("PublishConfig")
            .field("worker_url", &self.worker_url.as_str())
            .field("key_id", &self.key_id)
            .field("timeout", &self.timeout)
            .field("fleet_poll_interval", &self.fleet_poll_interval)
            .field("concurrency", &self.concurrency)
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
    /// Environment every inference pod and fill gets from the operator's
    /// flags: its own trace export (`--otlp-endpoint`) and `--hub-endpoint`.
    pub pod_env: Vec<(&'static str, String)>,
}

impl OperatorConfig {
    /// Builds the runtime configuration from parsed flags.
    pub fn from_args(args: &Args) -> Result<Self, ConfigError> {
        let Args {
            inference_image,
            inference_image_cuda,
            worker_url,
            publish_key_file,
            publish_key_id,
            publish_timeout_seconds,
            fleet_poll_interval,
            publish_concurrency,
            regions,
            watch_namespace,
            hub_endpoint,
            metrics_addr: _,
            leader_election: _,
            lease_name: _,
            lease_namespace: _,
            identity,
            max_concurrent_reconciles,
            log_format: _,
            otlp,
        } = args;
        let publish = match (worker_url, publish_key_file, publish_key_id) {
            (None, _, _) => None,
            (Some(url), Some(path), Some(id)) => {
                if !valid_key_id(id) {
                    return Err(ConfigError::BadKeyId(id.clone()));
                }
                Some(PublishConfig {
                    worker_url: url.clone(),
                    key_id: id.clone(),
                    key: read_signing_key(path)?,
                    timeout: Duration::from_secs(*publish_timeout_seconds),
                    fleet_poll_interval: Duration::from_secs(*fleet_poll_interval),
                    concurrency: usize::from(*publish_concurrency),
                })
            }
            (Some(_), _, _) => return Err(ConfigError::MissingKey),
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
                .as_deref()
                .map(str::trim)
                .filter(|i| !i.is_empty())
                .map_or_else(default_identity, str::to_owned),
            max_concurrent_reconciles: *max_concurrent_reconciles,
            pod_env: otlp
                .child_env()
                .into_iter()
                .chain(
                    hub_endpoint
                        .iter()
                        .map(|url| ("HF_ENDPOINT", url.as_str().trim_end_matches('/').to_owned())),
                )
                .collect(),
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
        assert!(matches!(
            parse(&["publish-key", "public", "--publish-key-file", "k.pem"]).command,
            Some(Command::PublishKey(PublishKeyCommand::Public))
        ));
        let err = Cli::try_parse_from(["backhaul-operator", "run", "--no-such-flag"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::UnknownArgument);
    }

    #[test]
    fn a_process_without_an_identity_gets_a_unique_one() {
        let identity = |argv: &[&str]| {
            OperatorConfig::from_args(&parse(argv).args)
                .unwrap()
                .identity
        };
        assert_eq!(identity(&["--identity", "operator-0"]), "operator-0");
        // An empty one (POD_NAME= from a template without the downward API)
        // counts as none; passing it also overrides the test's environment.
        let defaults: BTreeSet<String> = (0..100).map(|_| identity(&["--identity", " "])).collect();
        assert_eq!(defaults.len(), 100, "{defaults:?}");
        for id in &defaults {
            let (host, suffix) = id.rsplit_once('_').unwrap();
            assert!(!host.is_empty(), "{id}");
            assert!(
                suffix.len() == 8 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id}"
            );
        }
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

    #[test]
    fn publication_needs_a_readable_ed25519_key_and_a_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("key.pem");
        let vectors: serde_json::Value = serde_json::from_str(include_str!(
            "../../docs/schemas/publication-signature-vectors.json"
        ))
        .unwrap();
        std::fs::write(
            &pem,
            vectors["keys"]["cluster-us-east"]["pkcs8Pem"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let pem = pem.to_str().unwrap();
        let config = |argv: &[&str]| OperatorConfig::from_args(&parse(argv).args);
        let url = ["--worker-url", "https://router.example.com"];
        let ok = config(
            &[
                &url[..],
                &["--publish-key-file", pem, "--publish-key-id", "us-east-1"],
            ]
            .concat(),
        )
        .unwrap()
        .publish
        .unwrap();
        assert_eq!(ok.key_id, "us-east-1");
        assert_eq!(
            crate::publish::public_key_base64(&ok.key),
            vectors["keys"]["cluster-us-east"]["publicKey"]
                .as_str()
                .unwrap()
        );
        // The private key never reaches a log line through Debug.
        assert!(!format!("{ok:?}").contains("key: "), "{ok:?}");
        assert!(matches!(
            config(&[&url[..], &["--publish-key-file", pem]].concat()),
            Err(ConfigError::MissingKey)
        ));
        assert!(matches!(
            config(&[&url[..], &["--publish-key-id", "a"]].concat()),
            Err(ConfigError::MissingKey)
        ));
        assert!(matches!(
            config(
                &[
                    &url[..],
                    &["--publish-key-file", pem, "--publish-key-id", "bad.id"]
                ]
                .concat()
            ),
            Err(ConfigError::BadKeyId(_))
        ));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = config(
            &[
                &url[..],
                &[
                    "--publish-key-file",
                    garbage.to_str().unwrap(),
                    "--publish-key-id",
                    "a",
                ],
            ]
            .concat(),
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::BadKey { .. }), "{err}");
        assert_eq!(ok.concurrency, 8, "the documented default");
        let bound = |n: &str| {
            Cli::try_parse_from(["backhaul-operator", "--publish-concurrency", n])
                .map(|c| c.args.publish_concurrency)
        };
        assert_eq!(bound("1").unwrap(), 1);
        assert_eq!(bound("256").unwrap(), 256);
        assert!(bound("0").is_err() && bound("257").is_err());
        // No Worker URL: publication off, no key needed.
        assert!(config(&[]).unwrap().publish.is_none());
    }

    #[test]
    fn the_fleet_view_is_read_every_30_s_by_default_and_1_to_3600_s_when_set() {
        let interval = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("backhaul-operator").chain(argv.iter().copied()))
                .map(|c| c.args.fleet_poll_interval)
        };
        use clap::CommandFactory;
        let command = Cli::command();
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "fleet_poll_interval")
            .expect("--fleet-poll-interval");
        // Read from the declaration: the environment may set the flag.
        assert_eq!(arg.get_default_values()[0].to_string_lossy(), "30");
        assert_eq!(interval(&["--fleet-poll-interval", "1"]).unwrap(), 1);
        assert_eq!(interval(&["--fleet-poll-interval", "3600"]).unwrap(), 3600);
        assert!(interval(&["--fleet-poll-interval", "0"]).is_err());
        assert!(interval(&["--fleet-poll-interval", "3601"]).is_err());
    }
}

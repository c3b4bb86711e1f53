//! The mistral.rs engine: loading a model and talking to its request loop.
//!
//! We build engine `Request::Normal` values ourselves instead of using
//! `Model::stream_chat_request`: that helper hands the engine a one-slot
//! response channel which the engine awaits inside its step loop, so one
//! slow reader stalls every sequence in the batch. Our channel is roomy and
//! drained at once by a relay task (see [`crate::relay`]), which is where a
//! slow client is detected and cut off instead.
//!
//! The prompt is tokenized once: [`Engine::tokenize`] applies the chat
//! template and tokenizes through the engine, and [`Engine::submit`] hands
//! the engine those token ids (`CompletionTokens`), so it does not template
//! and tokenize the prompt a second time inside its step loop.
//!
//! Known mistral.rs 0.8.1 limits designed around here:
//! - builders ignore `with_device` (GGUF and plain alike pick "best device"
//!   or CPU), so `--device` maps to `with_force_cpu` or a CUDA check;
//! - there is no per-request seed, so requests with `seed` are refused;
//! - the tokenizer and chat template are not public, so tokenization runs
//!   on the engine's loop (between decoding steps) rather than in a pool of
//!   our own; callers bound how many wait there (see
//!   [`crate::service`]), and oversized prompts never get this far
//!   ([`crate::prompt_bound`]);
//! - the engine panics if a tokenization reply has no receiver, so an
//!   abandoned tokenization keeps its receiver until the engine answers
//!   (see `ReplyGuard`).

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use either::Either;
use indexmap::IndexMap;
use mistralrs::{
    AutoDeviceMapParams, Constraint, DeviceMapSetting, GgufModelBuilder, MemoryGpuConfig,
    MessageContent, Model, ModelDType, NormalRequest, PagedAttentionMetaBuilder, Request,
    RequestMessage, Response, SamplingParams, StopTokens, TextModelBuilder, TokenSource,
    core::TokenizationRequest,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::{
    config::{DeviceChoice, DtypeChoice, ModelArgs, ParallelismChoice},
    error::InferenceError,
    model_source::{self, LocalModel, SourceError},
    prompt_bound,
    tool_calls::ToolDef,
    validate::{Prompt, Sampling},
};

/// Room in the engine-to-relay channel. The relay drains it continuously, so
/// this only absorbs scheduling hiccups; the engine never waits on it.
const ENGINE_CHANNEL_CAPACITY: usize = 256;

/// A model that failed to load; the message names the model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("invalid configuration for model `{model}`: {message}")]
    Config { model: String, message: String },
    #[error("failed to load model `{model}`: {message}")]
    Engine { model: String, message: String },
}

/// What `ListModels` and `/v1/models` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub served_name: String,
    /// Context window in tokens (the smaller of the model's and --max-seq-len).
    pub context_length: usize,
    pub quantization: String,
    pub device: String,
    /// No prompt text longer than this many bytes fits the context window
    /// ([`prompt_bound`]); `None` when the vocabulary could not be read.
    pub max_prompt_bytes: Option<usize>,
}

/// A loaded model and the handle to its engine loop.
pub struct Engine {
    model: Model,
    info: ModelInfo,
    load_seconds: f64,
    /// The runtime the engine was loaded on, which outlives any request's
    /// (tests run each on a runtime of its own): abandoned tokenizations
    /// wait for their answer there (see `ReplyGuard`).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish()
    }
}

impl Engine {
    /// Resolves, downloads if needed, and loads the model. Blocks its
    /// thread for the load; run it where that is acceptable.
    pub async fn load(args: &ModelArgs) -> Result<Self, LoadError> {
        let started = Instant::now();
        let model_name = args.model.clone();
        let config_error = |message: String| LoadError::Config {
            model: model_name.clone(),
            message,
        };
        let local = model_source::resolve(args).await?;

        let force_cpu = match args.device {
            DeviceChoice::Cpu => true,
            DeviceChoice::Auto => false,
            DeviceChoice::Cuda => {
                if !cfg!(feature = "cuda") {
                    return Err(config_error(
                        "--device cuda needs a build with the `cuda` feature".into(),
                    ));
                }
                let best =
                    mistralrs::best_device(false).map_err(|e| config_error(e.to_string()))?;
                if !best.is_cuda() {
                    return Err(config_error(
                        "--device cuda but no CUDA device found".into(),
                    ));
                }
                false
            }
        };
        check_parallelism(
            args.parallelism,
            std::env::var("MISTRALRS_NO_NCCL").ok().as_deref(),
        )
        .map_err(config_error)?;
        let max_seq_len = args
            .max_seq_len
            .unwrap_or(AutoDeviceMapParams::DEFAULT_MAX_SEQ_LEN);
        let device_map = DeviceMapSetting::Auto(AutoDeviceMapParams::Text {
            max_seq_len,
            max_batch_size: args.max_num_seqs.max(1),
        });
        let paged = if args.paged_attn {
            if force_cpu || !mistralrs::paged_attn_supported() {
                tracing::warn!(
                    "--paged-attn is only available on CUDA builds and devices; ignored"
                );
                None
            } else {
                Some(
                    PagedAttentionMetaBuilder::default()
                        .with_gpu_memory(MemoryGpuConfig::Utilization(args.paged_attn_gpu_mem_util))
                        .build()
                        .map_err(|e| config_error(e.to_string()))?,
                )
            }
        } else {
            None
        };

        let (model, quantization) = match &local {
            LocalModel::Gguf { dir, files } => {
                if args.isq.is_some() {
                    return Err(config_error(
                        "--isq applies to plain models; GGUF weights are already quantized".into(),
                    ));
                }
                if args.dtype != DtypeChoice::Auto {
                    tracing::warn!("--dtype is ignored for GGUF models");
                }
                let mut builder = GgufModelBuilder::new(dir.to_string_lossy(), files.clone())
                    .with_token_source(TokenSource::None)
                    .with_max_num_seqs(args.max_num_seqs)
                    .with_device_mapping(device_map);
                if force_cpu {
                    builder = builder.with_force_cpu();
                }
                if let Some(template) = &args.chat_template {
                    builder = if is_jinja(template) {
                        builder.with_jinja_explicit(template.to_string_lossy().to_string())
                    } else {
                        builder.with_chat_template(template.to_string_lossy())
                    };
                }
                if let Some(paged) = paged {
                    builder = builder.with_paged_attn(paged);
                }
                let model = builder.build().await.map_err(|e| LoadError::Engine {
                    model: model_name.clone(),
                    message: format!("{e:#}"),
                })?;
                (model, gguf_quantization(files))
            }
            LocalModel::Plain { dir } => {
                let mut builder = TextModelBuilder::new(dir.to_string_lossy())
                    .with_token_source(TokenSource::None)
                    .with_max_num_seqs(args.max_num_seqs)
                    .with_device_mapping(device_map)
                    .with_dtype(match args.dtype {
                        DtypeChoice::Auto => ModelDType::Auto,
                        DtypeChoice::Bf16 => ModelDType::BF16,
                        DtypeChoice::F16 => ModelDType::F16,
                        DtypeChoice::F32 => ModelDType::F32,
                    });
                if force_cpu {
                    builder = builder.with_force_cpu();
                }
                let mut quantization = "none".to_string();
                if let Some(isq) = &args.isq {
                    let isq_type = mistralrs::parse_isq_value(isq, None).map_err(config_error)?;
                    quantization = format!("isq:{isq_type:?}");
                    builder = builder.with_isq(isq_type);
                }
                if let Some(template) = &args.chat_template {
                    builder = if is_jinja(template) {
                        builder.with_jinja_explicit(template.to_string_lossy().to_string())
                    } else {
                        builder.with_chat_template(template.to_string_lossy())
                    };
                }
                if let Some(paged) = paged {
                    builder = builder.with_paged_attn(paged);
                }
                let model = builder.build().await.map_err(|e| LoadError::Engine {
                    model: model_name.clone(),
                    message: format!("{e:#}"),
                })?;
                (model, quantization)
            }
        };

        let runner = model.inner();
        let engine_error = |e: String| LoadError::Engine {
            model: model_name.clone(),
            message: e,
        };
        let config = runner.config(None).map_err(engine_error)?;
        let model_context = runner
            .max_sequence_length(None)
            .map_err(|e| engine_error(e.to_string()))?
            .or(config.max_seq_len)
            .ok_or_else(|| engine_error("the model reports no context length".into()))?;
        let context_length = args
            .max_seq_len
            .map_or(model_context, |cap| cap.min(model_context));
        let info = ModelInfo {
            served_name: args
                .served_name
                .clone()
                .unwrap_or_else(|| model_source::default_served_name(args)),
            context_length,
            quantization,
            device: device_label(&config.device),
            max_prompt_bytes: prompt_bound::max_prompt_bytes(&local, context_length),
        };
        Ok(Self {
            model,
            info,
            load_seconds: started.elapsed().as_secs_f64(),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Seconds [`Engine::load`] took.
    pub fn load_seconds(&self) -> f64 {
        self.load_seconds
    }

    /// The prompt's tokens exactly as generation sees them (chat template
    /// applied, special tokens added). `turn` is the caller's tokenization
    /// slot: held until the engine has answered, even if the caller gives up
    /// first, so the slots bound what waits on the engine's loop.
    /// `tools` are shown to the model through the chat template.
    pub async fn tokenize(
        &self,
        prompt: &Prompt,
        tools: &[ToolDef],
        turn: OwnedSemaphorePermit,
    ) -> Result<Vec<u32>, InferenceError> {
        let (tx, rx) = mpsc::channel(1);
        let text = match prompt {
            Prompt::Chat(messages) => Either::Left(engine_messages(messages)),
            Prompt::Text(text) => Either::Right(text.clone()),
        };
        let request = Request::Tokenize(TokenizationRequest {
            text,
            tools: (!tools.is_empty()).then(|| tools.iter().map(engine_tool).collect()),
            add_generation_prompt: true,
            add_special_tokens: true,
            enable_thinking: None,
            reasoning_effort: None,
            response: tx,
        });
        self.sender()?
            .send(request)
            .await
            .map_err(|_| InferenceError::Engine("engine loop has stopped".into()))?;
        // The engine `expect`s this reply to be received and would panic
        // (taking every request down) if a caller that gave up had dropped
        // the receiver; the guard keeps it open in that case.
        let mut reply = ReplyGuard {
            waiting: Some((rx, turn)),
            runtime: self.runtime.clone(),
        };
        let received = match reply.waiting.as_mut() {
            Some((rx, _)) => rx.recv().await,
            None => None,
        };
        reply.waiting = None;
        match received {
            Some(Ok(tokens)) => Ok(tokens),
            Some(Err(e)) => Err(InferenceError::invalid(
                prompt.field(),
                format!("cannot be tokenized: {e}"),
            )),
            None => Err(InferenceError::Engine(
                "engine dropped a tokenization request".into(),
            )),
        }
    }

    /// Submits a streaming generation of the tokens [`Engine::tokenize`]
    /// made; responses arrive on the receiver (as completion chunks, chat
    /// or not), and the returned counter counts the tokens sampled.
    /// `schema`, if any, is a JSON schema the output is held to.
    /// Dropping the receiver cancels the sequence at the engine's next step.
    pub async fn submit(
        &self,
        prompt_tokens: Vec<u32>,
        sampling: &Sampling,
        schema: Option<serde_json::Value>,
    ) -> Result<(mpsc::Receiver<Response>, SampledTokens), InferenceError> {
        let (tx, rx) = mpsc::channel(ENGINE_CHANNEL_CAPACITY);
        let sampled = SampledTokens::default();
        let runner = self.model.inner();
        let request = Request::Normal(Box::new(NormalRequest {
            messages: RequestMessage::CompletionTokens(prompt_tokens),
            sampling_params: sampling_params(sampling),
            response: tx,
            return_logprobs: false,
            is_streaming: true,
            id: runner.next_request_id(),
            constraint: schema.map_or(Constraint::None, Constraint::JsonSchema),
            suffix: None,
            tools: None,
            tool_choice: None,
            logits_processors: Some(vec![Arc::new(sampled.clone())]),
            return_raw_logits: false,
            web_search_options: None,
            model_id: None,
            truncate_sequence: false,
        }));
        self.sender()?
            .send(request)
            .await
            .map_err(|_| InferenceError::Engine("engine loop has stopped".into()))?;
        Ok((rx, sampled))
    }

    fn sender(&self) -> Result<mpsc::Sender<Request>, InferenceError> {
        self.model
            .inner()
            .get_sender(None)
            .map_err(|e| InferenceError::Engine(e.to_string()))
    }
}

/// Counts the tokens the engine samples for one sequence: exact usage for
/// streamed completion chunks, which carry none (mistral.rs attaches usage
/// only to chat chunks). A logits processor sees the sequence's tokens so
/// far (prompt included) before each sampled token, and this one leaves
/// the logits as they are. It keeps the longest context seen rather than
/// counting calls: under a grammar the engine samples again when the
/// grammar refuses its first pick, calling processors twice for one token.
#[derive(Debug, Clone, Default)]
pub struct SampledTokens(Arc<AtomicUsize>);

impl SampledTokens {
    /// Tokens sampled after a prompt of `prompt_tokens`.
    pub fn count(&self, prompt_tokens: usize) -> usize {
        match self.0.load(Ordering::Relaxed) {
            0 => 0,
            longest => longest + 1 - prompt_tokens.min(longest),
        }
    }
}

impl mistralrs::CustomLogitsProcessor for SampledTokens {
    fn apply(
        &self,
        logits: &mistralrs::Tensor,
        context: &[u32],
    ) -> mistralrs::Result<mistralrs::Tensor> {
        self.0.fetch_max(context.len(), Ordering::Relaxed);
        Ok(logits.clone())
    }
}

/// Keeps a tokenization reply channel open, and its slot taken, if its
/// caller goes away before the engine has answered: a task waits for the
/// answer and drops it (the engine would panic on a closed channel).
struct ReplyGuard {
    waiting: Option<(
        mpsc::Receiver<anyhow::Result<Vec<u32>>>,
        OwnedSemaphorePermit,
    )>,
    runtime: tokio::runtime::Handle,
}

impl Drop for ReplyGuard {
    fn drop(&mut self) {
        if let Some((mut rx, turn)) = self.waiting.take() {
            self.runtime.spawn(async move {
                let _ = rx.recv().await;
                drop(turn);
            });
        }
    }
}

/// Sampling settings as the engine takes them. Built whole here rather than
/// through `RequestBuilder`, whose `set_deterministic_sampler` silently
/// resets every other field.
fn sampling_params(sampling: &Sampling) -> SamplingParams {
    SamplingParams {
        temperature: Some(sampling.temperature),
        top_k: sampling.top_k,
        top_p: sampling.top_p,
        min_p: sampling.min_p,
        top_n_logprobs: 0,
        frequency_penalty: sampling.frequency_penalty,
        presence_penalty: sampling.presence_penalty,
        repetition_penalty: sampling.repetition_penalty,
        stop_toks: (!sampling.stop.is_empty()).then(|| StopTokens::Seqs(sampling.stop.clone())),
        max_len: Some(sampling.max_tokens),
        logits_bias: None,
        n_choices: 1,
        dry_params: None,
    }
}

fn engine_messages(
    messages: &[crate::validate::ChatMessage],
) -> Vec<IndexMap<String, MessageContent>> {
    messages
        .iter()
        .map(|m| {
            let mut message = IndexMap::from([
                (
                    "role".to_string(),
                    Either::Left(m.role.as_str().to_string()),
                ),
                ("content".to_string(), Either::Left(m.content.clone())),
            ]);
            if !m.tool_calls.is_empty() {
                message.insert(
                    "tool_calls".to_string(),
                    Either::Right(m.tool_calls.iter().map(template_call).collect()),
                );
            }
            if let Some(id) = &m.tool_call_id {
                message.insert("tool_call_id".to_string(), Either::Left(id.clone()));
            }
            if let Some(name) = &m.name {
                message.insert("name".to_string(), Either::Left(name.clone()));
            }
            message
        })
        .collect()
}

/// A call in the history as chat templates read it: Hugging Face's
/// convention has `function.arguments` as an object (templates `tojson`
/// it); arguments that are not JSON are passed as the text they are.
fn template_call(call: &crate::validate::HistoryCall) -> IndexMap<String, serde_json::Value> {
    let arguments = serde_json::from_str(&call.arguments)
        .unwrap_or_else(|_| serde_json::Value::String(call.arguments.clone()));
    IndexMap::from([
        ("id".to_string(), serde_json::Value::String(call.id.clone())),
        ("type".to_string(), "function".into()),
        (
            "function".to_string(),
            serde_json::json!({"name": call.name, "arguments": arguments}),
        ),
    ])
}

fn engine_tool(def: &ToolDef) -> mistralrs::Tool {
    mistralrs::Tool {
        tp: mistralrs::ToolType::Function,
        function: mistralrs::Function {
            description: def.description.clone(),
            name: def.name.clone(),
            parameters: def
                .parameters
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        },
    }
}

/// The split a multi-GPU replica asked for, checked against what this
/// build can do: tensor parallelism is mistral.rs's NCCL path (the `nccl`
/// feature), which it takes whenever it is compiled in unless
/// `MISTRALRS_NO_NCCL=1` turns it off before the engine starts.
fn check_parallelism(
    asked: Option<ParallelismChoice>,
    no_nccl: Option<&str>,
) -> Result<(), String> {
    let nccl_off = no_nccl == Some("1");
    match asked {
        None => Ok(()),
        Some(ParallelismChoice::Tensor) if !cfg!(feature = "nccl") => Err(
            "--parallelism tensor needs a build with the `nccl` feature (the CUDA image); use --parallelism layers to place layers on the GPUs instead".into(),
        ),
        Some(ParallelismChoice::Tensor) if nccl_off => Err(
            "--parallelism tensor, but MISTRALRS_NO_NCCL=1 turns NCCL off; unset it".into(),
        ),
        Some(ParallelismChoice::Layers) if cfg!(feature = "nccl") && !nccl_off => Err(
            "--parallelism layers in a build with NCCL needs MISTRALRS_NO_NCCL=1 in the environment (the engine reads it before it starts)".into(),
        ),
        Some(_) => Ok(()),
    }
}

fn is_jinja(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "jinja")
}

/// `gguf:Q4_1` from `SmolLM2-135M-Instruct.Q4_1.gguf`, else `gguf`.
fn gguf_quantization(files: &[String]) -> String {
    let tag = files.first().and_then(|f| {
        let stem = f.strip_suffix(".gguf").unwrap_or(f);
        let last = stem.rsplit(['.', '-']).next()?;
        let upper = last.to_ascii_uppercase();
        (upper.starts_with('Q')
            || upper.starts_with("IQ")
            || matches!(upper.as_str(), "F16" | "BF16" | "F32"))
        .then_some(upper)
    });
    tag.map_or_else(|| "gguf".to_string(), |t| format!("gguf:{t}"))
}

fn device_label(device: &mistralrs::Device) -> String {
    if device.is_cpu() {
        return "cpu".to_string();
    }
    // `Cuda { gpu_id: 0 }` → `cuda:0`; candle's location type is not
    // re-exported, its Debug form is stable enough for a label.
    let location = format!("{:?}", device.location());
    let id: String = location.chars().filter(char::is_ascii_digit).collect();
    let kind = if device.is_cuda() { "cuda" } else { "metal" };
    format!("{kind}:{id}")
}

/// Loads once for many servers (tests share one model this way).
pub type SharedEngine = Arc<Engine>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelism_is_checked_against_the_build() {
        use ParallelismChoice::{Layers, Tensor};
        assert_eq!(check_parallelism(None, None), Ok(()));
        let nccl = cfg!(feature = "nccl");
        // Without NCCL compiled in, layers is the only split.
        assert_eq!(check_parallelism(Some(Tensor), None).is_ok(), nccl);
        assert_eq!(check_parallelism(Some(Layers), None).is_ok(), !nccl);
        assert_eq!(check_parallelism(Some(Layers), Some("1")), Ok(()));
        assert!(check_parallelism(Some(Tensor), Some("1")).is_err());
        if !nccl {
            let error = check_parallelism(Some(Tensor), None).unwrap_err();
            assert!(error.contains("`nccl` feature"), "{error}");
        }
    }

    #[test]
    fn quantization_label_comes_from_the_file_name() {
        assert_eq!(
            gguf_quantization(&["SmolLM2-135M-Instruct.Q4_1.gguf".into()]),
            "gguf:Q4_1"
        );
        assert_eq!(
            gguf_quantization(&["model-q4_k_m.gguf".into()]),
            "gguf:Q4_K_M"
        );
        assert_eq!(gguf_quantization(&["model.gguf".into()]), "gguf");
    }

    #[test]
    fn greedy_sampling_keeps_max_tokens_and_stops() {
        let params = sampling_params(&Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            max_tokens: 7,
            stop: vec!["END".into()],
            frequency_penalty: None,
            presence_penalty: None,
            repetition_penalty: None,
        });
        assert_eq!(params.max_len, Some(7));
        assert!(matches!(params.stop_toks, Some(StopTokens::Seqs(ref s)) if s == &["END"]));
    }
}

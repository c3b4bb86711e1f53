//! What the benchmark sends requests to, and how one streamed request is
//! timed on each: mistral.rs in this process, an OpenAI-compatible SSE
//! server (Backhaul's HTTP surface, `mistralrs serve`, or a named peer such
//! as llama.cpp's server), Backhaul's gRPC `ChatStream`.
//!
//! Every target gets the same chat prompt, greedy sampling (temperature 0)
//! and `max_tokens`. A "token event" is one streamed piece of non-empty text;
//! time to first token is until the first such event, inter-token latency
//! the gaps between them.

use std::{path::Path, time::Instant};

use anyhow::{Context, bail};
use backhaul_proto::inference::v1::{
    ChatRequest, Message, Sampling, inference_client::InferenceClient,
};
use either::Either;
use futures::StreamExt;
use indexmap::IndexMap;
use mistralrs::{
    AutoDeviceMapParams, Constraint, DeviceMapSetting, GgufModelBuilder, Model, NormalRequest,
    Request, RequestMessage, Response, SamplingParams, TokenSource,
};
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// One timed request.
#[derive(Debug, Clone)]
pub struct Sample {
    pub ttft_s: f64,
    pub gaps_s: Vec<f64>,
    /// Completion tokens as the server reports them (usage); else
    /// `max_tokens` when the stream ended for `length`; else the number of
    /// token events.
    pub tokens: usize,
    /// Whether `tokens` came from the server's usage.
    pub tokens_from_usage: bool,
    pub text: String,
}

/// Tracks the timing of one stream as its events arrive.
struct Timer {
    start: Instant,
    last: Option<Instant>,
    ttft_s: Option<f64>,
    gaps_s: Vec<f64>,
    events: usize,
    text: String,
}

impl Timer {
    fn start() -> Self {
        Self {
            start: Instant::now(),
            last: None,
            ttft_s: None,
            gaps_s: Vec::new(),
            events: 0,
            text: String::new(),
        }
    }

    fn text(&mut self, piece: &str) {
        if piece.is_empty() {
            return;
        }
        let now = Instant::now();
        match self.last {
            None => self.ttft_s = Some((now - self.start).as_secs_f64()),
            Some(last) => self.gaps_s.push((now - last).as_secs_f64()),
        }
        self.last = Some(now);
        self.events += 1;
        self.text.push_str(piece);
    }

    /// `length_tokens`: `max_tokens` when the stream ended with finish
    /// reason `length` (it generated exactly that many), for servers that
    /// stream no usage (llama-cpp-python's), whose text events need not be
    /// one per token.
    fn finish(
        self,
        usage_tokens: Option<usize>,
        length_tokens: Option<usize>,
    ) -> anyhow::Result<Sample> {
        let ttft_s = self.ttft_s.context("the stream carried no text")?;
        Ok(Sample {
            ttft_s,
            gaps_s: self.gaps_s,
            tokens: usage_tokens.or(length_tokens).unwrap_or(self.events),
            tokens_from_usage: usage_tokens.is_some(),
            text: self.text,
        })
    }
}

pub enum Target {
    /// mistral.rs in this process, requests built as its own server builds
    /// them (a roomy response channel, the engine's request ids).
    InProcess(Model),
    /// `POST {base}/v1/chat/completions` with `stream: true`.
    OpenAi {
        client: reqwest::Client,
        url: String,
        model: String,
    },
    /// `backhaul.inference.v1.Inference/ChatStream`.
    Grpc(InferenceClient<Channel>),
}

impl Target {
    /// Loads the GGUF file with the settings `backhaul-inference` uses: no
    /// Hub token, `max_num_seqs` sequences (its `--max-num-seqs`, 32 by
    /// default), automatic device map for `max_seq_len` tokens (its
    /// `--max-seq-len`, by default mistral.rs's 4096) and that batch; on the
    /// CPU when `cpu` (`--device cpu`), else the best device.
    pub async fn in_process(
        gguf: &Path,
        cpu: bool,
        max_num_seqs: usize,
        max_seq_len: usize,
    ) -> anyhow::Result<Self> {
        let dir = gguf.parent().context("model path has no directory")?;
        let file = gguf
            .file_name()
            .context("model path has no file name")?
            .to_string_lossy()
            .to_string();
        let mut builder = GgufModelBuilder::new(dir.to_string_lossy(), vec![file])
            .with_token_source(TokenSource::None)
            .with_max_num_seqs(max_num_seqs)
            .with_device_mapping(DeviceMapSetting::Auto(AutoDeviceMapParams::Text {
                max_seq_len,
                max_batch_size: max_num_seqs,
            }));
        if cpu {
            builder = builder.with_force_cpu();
        }
        let model = builder
            .build()
            .await
            .context("loading the model in-process")?;
        Ok(Self::InProcess(model))
    }

    pub fn openai(base: &str, model: &str) -> anyhow::Result<Self> {
        Ok(Self::OpenAi {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
            url: format!("{}/v1/chat/completions", base.trim_end_matches('/')),
            model: model.to_string(),
        })
    }

    /// An OpenAI-compatible server, answering to the first model its
    /// `GET {base}/v1/models` lists; returns that name too.
    pub async fn openai_first_model(base: &str) -> anyhow::Result<(Self, String)> {
        let url = format!("{}/v1/models", base.trim_end_matches('/'));
        let list: serde_json::Value = reqwest::get(&url)
            .await
            .with_context(|| format!("GET {url}"))?
            .error_for_status()?
            .json()
            .await?;
        let model = list
            .pointer("/data/0/id")
            .and_then(|id| id.as_str())
            .with_context(|| format!("{url} lists no model"))?
            .to_string();
        Ok((Self::openai(base, &model)?, model))
    }

    pub async fn grpc(addr: &str) -> anyhow::Result<Self> {
        Ok(Self::Grpc(
            InferenceClient::connect(addr.to_string())
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        ))
    }

    pub async fn run(&self, prompt: &str, max_tokens: usize) -> anyhow::Result<Sample> {
        match self {
            Self::InProcess(model) => run_in_process(model, prompt, max_tokens).await,
            Self::OpenAi { client, url, model } => {
                run_openai(client, url, model, prompt, max_tokens).await
            }
            Self::Grpc(client) => run_grpc(client.clone(), prompt, max_tokens).await,
        }
    }
}

async fn run_in_process(model: &Model, prompt: &str, max_tokens: usize) -> anyhow::Result<Sample> {
    let runner = model.inner();
    // mistralrs-server-core's channel size; the reader below drains it at once.
    let (tx, mut rx) = mpsc::channel(10_000);
    let message = IndexMap::from([
        ("role".to_string(), Either::Left("user".to_string())),
        ("content".to_string(), Either::Left(prompt.to_string())),
    ]);
    let request = Request::Normal(Box::new(NormalRequest {
        messages: RequestMessage::Chat {
            messages: vec![message],
            enable_thinking: None,
            reasoning_effort: None,
        },
        sampling_params: SamplingParams {
            temperature: Some(0.0),
            max_len: Some(max_tokens),
            ..SamplingParams::deterministic()
        },
        response: tx,
        return_logprobs: false,
        is_streaming: true,
        id: runner.next_request_id(),
        constraint: Constraint::None,
        suffix: None,
        tools: None,
        tool_choice: None,
        logits_processors: None,
        return_raw_logits: false,
        web_search_options: None,
        model_id: None,
        truncate_sequence: false,
    }));
    let mut timer = Timer::start();
    runner
        .get_sender(None)?
        .send(request)
        .await
        .context("engine loop has stopped")?;
    let mut usage = None;
    while let Some(response) = rx.recv().await {
        match response {
            Response::Chunk(chunk) => {
                let Some(choice) = chunk.choices.first() else {
                    continue;
                };
                if let Some(piece) = &choice.delta.content {
                    timer.text(piece);
                }
                if let Some(u) = &chunk.usage {
                    usage = Some(u.completion_tokens);
                }
                if choice.finish_reason.is_some() {
                    break;
                }
            }
            Response::InternalError(e) | Response::ValidationError(e) => bail!("engine: {e}"),
            Response::ModelError(e, _) => bail!("model: {e}"),
            other => bail!("unexpected engine response {}", response_kind(&other)),
        }
    }
    timer.finish(usage, None)
}

fn response_kind(r: &Response) -> &'static str {
    match r {
        Response::Done(_) => "Done",
        Response::CompletionChunk(_) | Response::CompletionDone(_) => "Completion",
        _ => "other",
    }
}

async fn run_openai(
    client: &reqwest::Client,
    url: &str,
    model: &str,
    prompt: &str,
    max_tokens: usize,
) -> anyhow::Result<Sample> {
    let body = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut timer = Timer::start();
    let response = client.post(url).json(&body).send().await?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "{url}: {status}: {}",
            response.text().await.unwrap_or_default()
        );
    }
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::<u8>::new();
    let mut usage = None;
    let mut length = None;
    'read: while let Some(bytes) = stream.next().await {
        buffer.extend_from_slice(&bytes?);
        while let Some(end) = buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = std::str::from_utf8(&line)?.trim();
            let Some(data) = line.strip_prefix("data:") else {
                continue;
            };
            let data = data.trim();
            if data == "[DONE]" {
                break 'read;
            }
            let event: serde_json::Value = serde_json::from_str(data)?;
            if let Some(error) = event.get("error") {
                bail!("{url}: stream error {error}");
            }
            if let Some(piece) = event
                .pointer("/choices/0/delta/content")
                .and_then(|c| c.as_str())
            {
                timer.text(piece);
            }
            if let Some(n) = event
                .pointer("/usage/completion_tokens")
                .and_then(serde_json::Value::as_u64)
            {
                usage = Some(n as usize);
            }
            if event
                .pointer("/choices/0/finish_reason")
                .and_then(|r| r.as_str())
                == Some("length")
            {
                length = Some(max_tokens);
            }
        }
    }
    timer.finish(usage, length)
}

async fn run_grpc(
    mut client: InferenceClient<Channel>,
    prompt: &str,
    max_tokens: usize,
) -> anyhow::Result<Sample> {
    let request = ChatRequest {
        model: String::new(),
        messages: vec![Message {
            role: "user".into(),
            content: prompt.into(),
        }],
        sampling: Some(Sampling {
            temperature: Some(0.0),
            max_tokens: Some(u32::try_from(max_tokens)?),
            ..Sampling::default()
        }),
        request_id: String::new(),
    };
    let mut timer = Timer::start();
    let mut stream = client.chat_stream(request).await?.into_inner();
    let mut usage = None;
    while let Some(message) = stream.message().await? {
        timer.text(&message.delta);
        if let Some(u) = message.usage {
            usage = Some(u.completion_tokens as usize);
        }
    }
    timer.finish(usage, None)
}

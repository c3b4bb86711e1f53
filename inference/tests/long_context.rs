//! An unset `max_tokens` on a prompt that nearly fills the context window
//! generates what is left of it and ends with `length`, rather than being
//! refused or running past the window. The model is loaded with a 256-token
//! window so the prompt (and its prefill) stays small.

mod common;

use std::sync::{Arc, OnceLock};

use backhaul_inference::Engine;
use backhaul_proto::inference::v1::FinishReason;
use common::*;

const CONTEXT: u32 = 256;

fn small_context_engine() -> Arc<Engine> {
    static ENGINE: OnceLock<Arc<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| load_engine(&["--max-seq-len", &CONTEXT.to_string()]))
        .clone()
}

/// A message of `words` times " hi", then a question that the model
/// answers at some length (so it does not stop before the window does).
fn message(words: usize) -> String {
    format!(
        "{} Now count from one to twenty in words.",
        " hi".repeat(words)
    )
}

async fn prompt_tokens(client: &mut GrpcClient, words: usize) -> u32 {
    let reply = client
        .chat(chat(&message(words), 1))
        .await
        .expect("a short chat")
        .into_inner();
    reply.usage.unwrap().prompt_tokens
}

#[tokio::test]
async fn an_unset_max_tokens_fits_what_is_left_of_a_long_context() {
    let handle = server_on(small_context_engine(), &["--default-max-tokens", "100"]).await;
    let mut client = grpc(&handle).await;

    // A prompt that leaves exactly 3 tokens of room.
    let one = prompt_tokens(&mut client, 1).await;
    let per_word = prompt_tokens(&mut client, 2).await - one;
    assert_eq!(per_word, 1, "\" hi\" is one token");
    let words = (CONTEXT - 3 - one) as usize + 1;
    let mut request = chat(&message(words), 1);
    request.sampling.as_mut().unwrap().max_tokens = None;
    let reply = client.chat(request).await.expect("served").into_inner();
    let usage = reply.usage.unwrap();
    assert_eq!(usage.prompt_tokens, CONTEXT - 3);
    assert_eq!(usage.completion_tokens, 3);
    assert_eq!(reply.finish_reason, FinishReason::Length as i32);

    // One token more than the window holds is refused, naming the prompt.
    let status = client.chat(chat(&message(words + 3), 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("context window"), "{status:?}");
}

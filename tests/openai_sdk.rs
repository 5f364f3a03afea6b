//! The unmodified `async-openai` crate through the proxy, changing only its base URL and key:
//! a chat completion, a streamed one (whose usage the proxy asks for, whatever the client said),
//! embeddings, and a cap refusal surfacing as the SDK's own typed API error.

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use futures_util::StreamExt;
use secrecy::SecretString;
use vault_key::{Client, ExposeSecret, KeySpec, VaultKey};
use vault_key_server::{Server, ServerConfig};

const ADMIN: &str = "openai-sdk-admin-token-0123";

/// The SDK, as a user configures it: the proxy (with its `/v1`) as the base, the token as the key.
fn sdk(key: &VaultKey) -> async_openai::Client<OpenAIConfig> {
    async_openai::Client::with_config(
        OpenAIConfig::new()
            .with_api_base(format!("{}v1", key.base_url()))
            .with_api_key(key.token().expose_secret()),
    )
}

fn chat(prompt: &str, max_tokens: u32) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-4o-mini")
        .max_completion_tokens(max_tokens)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content(prompt)
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap()
}

#[tokio::test]
async fn the_unmodified_openai_sdk_works_through_the_proxy() {
    let server = Server::start(ServerConfig::sandbox(SecretString::from(ADMIN)))
        .await
        .unwrap();
    let client = Client::new(server.url(), ADMIN).unwrap();
    let key = client
        .issue(
            &KeySpec::new("openai")
                .cap_usd(1)
                .endpoints(["/v1/chat/completions", "/v1/embeddings"]),
        )
        .await
        .unwrap();
    let openai = sdk(&key);
    // The runtime's convenience builds the same configuration.
    let convenient = async_openai::Client::with_config(key.openai_config());
    let answer = convenient
        .chat()
        .create(chat("via the runtime", 3))
        .await
        .unwrap();
    assert_eq!(answer.usage.unwrap().completion_tokens, 3);

    let answer = openai.chat().create(chat("hello there", 20)).await.unwrap();
    let usage = answer.usage.unwrap();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (2, 8));

    // Streamed, and the request asks for no usage: the proxy asks for it, so the last chunk
    // carries it (and the call is settled on it).
    let mut stream = openai
        .chat()
        .create_stream(chat("stream these four words", 5))
        .await
        .unwrap();
    let mut text = String::new();
    let mut streamed_usage = None;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        for choice in &chunk.choices {
            text.push_str(choice.delta.content.as_deref().unwrap_or(""));
        }
        if chunk.usage.is_some() {
            streamed_usage = chunk.usage;
        }
    }
    assert_eq!(text.split_whitespace().count(), 5);
    assert_eq!(streamed_usage.unwrap().completion_tokens, 5);

    let embedded = openai
        .embeddings()
        .create(
            CreateEmbeddingRequestArgs::default()
                .model("text-embedding-3-small")
                .input("three short words")
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(embedded.usage.prompt_tokens, 3);

    // A key too small for the call: the SDK's typed error, with our code inside.
    let poor = client
        .issue(
            &KeySpec::new("openai")
                .cap_exact("0.000001".parse().unwrap())
                .endpoints(["/v1/chat/completions"]),
        )
        .await
        .unwrap();
    match sdk(&poor).chat().create(chat("too dear", 1000)).await {
        Err(OpenAIError::ApiError(error)) => {
            assert_eq!(error.status_code.as_u16(), 429);
            assert_eq!(error.api_error.code.as_deref(), Some("cap_exhausted"));
        }
        other => panic!("expected the SDK's API error, got {other:?}"),
    }
    key.revoke().await.unwrap();
    poor.revoke().await.unwrap();
    server.shutdown().await;
}

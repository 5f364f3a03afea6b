//! OpenAI and Anthropic through the proxy: reservation on the request's bounds, settlement on the
//! usage the answer reports (JSON or streamed), and everything the meter cannot bound refused.

mod common;

use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use vault_key_server::meter::llm::{AnthropicMeter, ModelPrice, OpenAiMeter, PriceTable, Usage};
use vault_key_server::meter::Meter;
use vault_key_server::Server;

fn micros(view: &Value, field: &str) -> u64 {
    (view[field].as_f64().unwrap() * 1_000_000.0).round() as u64
}

fn price(vendor: &str, model: &str) -> ModelPrice {
    let table = if vendor == "openai" {
        PriceTable::openai()
    } else {
        PriceTable::anthropic()
    };
    table.get(model).unwrap().clone()
}

/// The key's view once its calls have settled (settlement follows the end of a stream).
async fn settled_view(server: &Server, key: &Value) -> Value {
    for _ in 0..200 {
        let view = view(server, key).await;
        if view["reserved_usd"] == json!(0) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    view(server, key).await
}

#[tokio::test]
async fn a_chat_completion_settles_on_its_usage_with_n_choices() {
    let server = start().await;
    let key = issue(&server, model_key("openai", 1.0, &["/v1/chat/completions"])).await;
    let body = json!({
        "model": "gpt-4o-mini", "n": 3, "max_tokens": 5,
        "messages": [{"role": "user", "content": "one two three four"}],
    });
    let (status, answer) = send(model_call(
        &server,
        "openai",
        token(&key),
        "/v1/chat/completions",
        &body,
        &[
            ("x-sandbox-output-tokens", "9"),
            ("x-sandbox-cached-tokens", "1"),
        ],
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"].as_array().unwrap().len(), 3);
    // Output clamped by the request's own limit: 5 per choice, 15 in all.
    assert_eq!(answer["usage"]["completion_tokens"], 15);
    let usage = Usage {
        input: 3,
        cached_input: 1,
        cache_write: 0,
        output: 15,
    };
    let view = settled_view(&server, &key).await;
    assert_eq!(
        micros(&view, "spent_today_usd"),
        usage.cost(&price("openai", "gpt-4o-mini")).micros()
    );
}

#[tokio::test]
async fn the_reservation_is_bounded_by_the_models_ceiling_and_multiplied_by_n() {
    let server = start().await;
    let body = |max_tokens: u64, n: u64| {
        json!({
            "model": "gpt-4o-mini", "max_tokens": max_tokens, "n": n,
            "messages": [{"role": "user", "content": "hello"}],
        })
    };
    // gpt-4o-mini: at most 16,384 output tokens at $0.60 per million ≈ $0.0098 per choice.
    let key = issue(
        &server,
        model_key("openai", 0.01, &["/v1/chat/completions"]),
    )
    .await;
    let (status, answer) = send(model_call(
        &server,
        "openai",
        token(&key),
        "/v1/chat/completions",
        &body(1_000_000_000, 1),
        &[],
    ))
    .await;
    assert_eq!(status, 200, "a clamped limit fits in $0.01: {answer}");
    let (status, refused) = send(model_call(
        &server,
        "openai",
        token(&key),
        "/v1/chat/completions",
        &body(1_000_000_000, 2),
        &[],
    ))
    .await;
    assert_eq!(
        (status, &refused["code"]),
        (429, &json!("cap_exhausted")),
        "{refused}"
    );
    let requested = micros(&refused, "requested_usd");
    assert!(
        (19_660..20_000).contains(&requested),
        "n = 2 reserves two ceilings: {requested}"
    );
}

#[tokio::test]
async fn streams_reach_the_client_as_they_come_and_settle_on_the_usage_the_proxy_asked_for() {
    let server = start().await;
    let key = issue(&server, model_key("openai", 1.0, &["/v1/chat/completions"])).await;
    // The client asks for no usage; the proxy asks for it all the same.
    let body = json!({
        "model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": false},
        "messages": [{"role": "user", "content": "stream me five words"}],
    });
    let response = model_call(
        &server,
        "openai",
        token(&key),
        "/v1/chat/completions",
        &body,
        &[
            ("x-sandbox-output-tokens", "6"),
            ("x-sandbox-chunk-delay-ms", "100"),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "), "{first:?}");
    // The first event is here while the stream is still going: nothing is settled yet.
    assert!(
        micros(&view(&server, &key).await, "reserved_usd") > 0,
        "the proxy held the stream back until its end"
    );
    let mut text = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = stream.next().await {
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    assert!(text.contains("\"usage\":{"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let forwarded = server.sandbox().unwrap().received();
    let sent: Value = serde_json::from_slice(&forwarded[0].body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    let usage = Usage {
        input: 4,
        cached_input: 0,
        cache_write: 0,
        output: 6,
    };
    let view = settled_view(&server, &key).await;
    assert_eq!(
        micros(&view, "spent_today_usd"),
        usage.cost(&price("openai", "gpt-4o-mini")).micros()
    );
}

#[tokio::test]
async fn a_stream_cut_short_or_an_answer_without_usage_keeps_its_reservation() {
    let server = start().await;
    let key = issue(&server, model_key("openai", 1.0, &["/v1/chat/completions"])).await;
    let body = json!({
        "model": "gpt-4o-mini", "stream": true, "max_tokens": 100,
        "messages": [{"role": "user", "content": "cut"}],
    });
    let response = model_call(
        &server,
        "openai",
        token(&key),
        "/v1/chat/completions",
        &body,
        // Paced, so that the answer's head is out before the break.
        &[
            ("x-sandbox-cut-after", "3"),
            ("x-sandbox-chunk-delay-ms", "50"),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut broke = false;
    while let Some(chunk) = stream.next().await {
        if chunk.is_err() {
            broke = true;
            break;
        }
    }
    assert!(broke, "the client sees the stream break");
    let plain = json!({
        "model": "gpt-4o-mini", "max_tokens": 100,
        "messages": [{"role": "user", "content": "no usage"}],
    });
    let (status, _) = send(model_call(
        &server,
        "openai",
        token(&key),
        "/v1/chat/completions",
        &plain,
        &[("x-sandbox-omit-usage", "1")],
    ))
    .await;
    assert_eq!(status, 200);
    let mut events = Value::Null;
    for _ in 0..200 {
        events = admin_get(
            &server,
            &format!("/v1/keys/{}/events", key["id"].as_str().unwrap()),
        )
        .await
        .1;
        let unsettled = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["settled_usd"].is_null() && e["reserved_usd"] != json!(0))
            .count();
        if unsettled == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let view = view(&server, &key).await;
    assert_eq!(micros(&view, "spent_today_usd"), 0, "{view}");
    assert!(micros(&view, "reserved_usd") > 0, "{view}");
    assert_eq!(
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["settled_usd"].is_null())
            .count(),
        2,
        "{events}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_that_together_exceed_the_cap_are_admitted_exactly() {
    let server = start().await;
    let body = json!({
        "model": "gpt-4o-mini", "max_tokens": 10000,
        "messages": [{"role": "user", "content": "concurrent"}],
    });
    // Learn one call's reservation from a refusal, then give a key room for exactly five.
    let probe = issue(
        &server,
        model_key("openai", 0.000001, &["/v1/chat/completions"]),
    )
    .await;
    let (_, refused) = send(model_call(
        &server,
        "openai",
        token(&probe),
        "/v1/chat/completions",
        &body,
        &[],
    ))
    .await;
    let one = micros(&refused, "requested_usd");
    let cap = (one * 5 + one / 2) as f64 / 1_000_000.0;
    let key = issue(&server, model_key("openai", cap, &["/v1/chat/completions"])).await;
    let calls = (0..20).map(|_| {
        let request = model_call(
            &server,
            "openai",
            token(&key),
            "/v1/chat/completions",
            &body,
            &[("x-sandbox-delay-ms", "1500")],
        );
        tokio::spawn(async move { send(request).await.0 })
    });
    let statuses: Vec<u16> = futures_util::future::join_all(calls)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        15,
        "{statuses:?}"
    );
}

#[tokio::test]
async fn responses_and_embeddings_settle_on_their_usage() {
    let server = start().await;
    let key = issue(
        &server,
        model_key("openai", 1.0, &["/v1/responses", "/v1/embeddings"]),
    )
    .await;
    for stream in [false, true] {
        let body = json!({"model": "gpt-4.1-mini", "input": "three little words", "stream": stream, "max_output_tokens": 50});
        let response = model_call(&server, "openai", token(&key), "/v1/responses", &body, &[])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await.unwrap();
    }
    let (status, answer) = send(model_call(
        &server,
        "openai",
        token(&key),
        "/v1/embeddings",
        &json!({"model": "text-embedding-3-small", "input": ["a b", "c d e"]}),
        &[],
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    let responses = Usage {
        input: 3,
        cached_input: 0,
        cache_write: 0,
        output: 8,
    }
    .cost(&price("openai", "gpt-4.1-mini"));
    let embeddings = Usage {
        input: 5,
        cached_input: 0,
        cache_write: 0,
        output: 0,
    }
    .cost(&price("openai", "text-embedding-3-small"));
    let view = settled_view(&server, &key).await;
    assert_eq!(
        micros(&view, "spent_today_usd"),
        responses.micros() * 2 + embeddings.micros()
    );
}

#[tokio::test]
async fn anthropic_messages_take_the_token_in_x_api_key_and_settle_streamed_or_not() {
    let server = start().await;
    let key = issue(&server, model_key("anthropic", 1.0, &["/v1/messages"])).await;
    assert_eq!(key["token_placement"]["header"], "x-api-key");
    for stream in [false, true] {
        let body = json!({
            "model": "claude-3-5-haiku", "max_tokens": 64, "stream": stream,
            "messages": [{"role": "user", "content": "hello there claude"}],
        });
        let response = model_call(
            &server,
            "anthropic",
            token(&key),
            "/v1/messages",
            &body,
            &[],
        )
        .send()
        .await
        .unwrap();
        assert_eq!(response.status(), 200);
        let _ = response.bytes().await.unwrap();
    }
    let one = Usage {
        input: 3,
        cached_input: 0,
        cache_write: 0,
        output: 8,
    }
    .cost(&price("anthropic", "claude-3-5-haiku"));
    let view = settled_view(&server, &key).await;
    assert_eq!(micros(&view, "spent_today_usd"), one.micros() * 2);
    // The upstream got the real secret in x-api-key, and no vault token anywhere.
    for received in server.sandbox().unwrap().received() {
        assert!(received
            .headers
            .iter()
            .any(|(n, v)| n == "x-api-key" && v == "sk_test_vaultkey_sandbox"));
        assert!(received.headers.iter().all(|(_, v)| !v.contains("vk_")));
    }
    // A Bearer token is not where Anthropic's SDK puts its key.
    let (status, _) = send(
        http()
            .post(format!("{}/anthropic/v1/messages", server.url()))
            .bearer_auth(token(&key))
            .header("content-type", "application/json")
            .body("{}"),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn model_calls_the_meter_cannot_bound_are_refused() {
    let server = start().await;
    let openai = issue(&server, model_key("openai", 100.0, &["/v1/**"])).await;
    let anthropic = issue(&server, model_key("anthropic", 100.0, &["/v1/**"])).await;
    let chat = |extra: Value| {
        let mut body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let refused_openai = [
        chat(json!({"model": "gpt-unknown"})),
        chat(json!({"max_tokens": 5, "max_completion_tokens": 5})),
        chat(json!({"max_tokens": 0})),
        chat(json!({"n": 0})),
        chat(
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
        ),
        chat(json!({"tools": [{"type": "web_search_preview"}]})),
        chat(json!({"audio": {"voice": "alloy"}})),
        chat(json!({"service_tier": "priority"})),
    ];
    for body in &refused_openai {
        let (status, answer) = send(model_call(
            &server,
            "openai",
            token(&openai),
            "/v1/chat/completions",
            body,
            &[],
        ))
        .await;
        assert_eq!(
            (status, &answer["code"]),
            (400, &json!("unmeterable_request")),
            "{body}"
        );
        assert_eq!(
            answer["error"]["code"], "unmeterable_request",
            "OpenAI's envelope: {answer}"
        );
    }
    // A key given twice is read one way by us and maybe another by the vendor: refused.
    let duplicated = http()
        .post(format!("{}/openai/v1/chat/completions", server.url()))
        .bearer_auth(token(&openai))
        .header("content-type", "application/json")
        .body(r#"{"model":"gpt-4o-mini","max_tokens":1,"max_tokens":100000,"messages":[]}"#);
    let (status, answer) = send(duplicated).await;
    assert_eq!(
        (status, &answer["code"]),
        (400, &json!("unmeterable_request")),
        "{answer}"
    );
    let responses_with_state =
        json!({"model": "gpt-4o-mini", "input": "hi", "previous_response_id": "resp_1"});
    let (status, _) = send(model_call(
        &server,
        "openai",
        token(&openai),
        "/v1/responses",
        &responses_with_state,
        &[],
    ))
    .await;
    assert_eq!(status, 400);
    let (status, answer) = send(model_call(
        &server,
        "openai",
        token(&openai),
        "/v1/images/generations",
        &json!({"model": "gpt-image-1", "prompt": "x"}),
        &[],
    ))
    .await;
    assert_eq!(
        (status, &answer["code"]),
        (400, &json!("unmeterable_request")),
        "{answer}"
    );
    let no_max =
        json!({"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "hi"}]});
    let (status, answer) = send(model_call(
        &server,
        "anthropic",
        token(&anthropic),
        "/v1/messages",
        &no_max,
        &[],
    ))
    .await;
    assert_eq!(
        (status, &answer["code"]),
        (400, &json!("unmeterable_request")),
        "{answer}"
    );
    assert_eq!(answer["type"], "error", "Anthropic's envelope: {answer}");
    assert_eq!(answer["error"]["type"], "invalid_request_error");
    let (status, _) = send(model_call(
        &server,
        "anthropic",
        token(&anthropic),
        "/v1/messages/count_tokens",
        &json!({"model": "claude-3-5-haiku", "messages": [{"role": "user", "content": "a b"}]}),
        &[],
    ))
    .await;
    assert_eq!(status, 200, "counting tokens is free");
    assert!(server
        .sandbox()
        .unwrap()
        .received()
        .iter()
        .all(|r| r.path.ends_with("/count_tokens")));
}

type Headers<'a> = &'a [(&'a str, &'a str)];

/// What a vendor would bill beyond what the request shows: headers that switch features on,
/// fields the meter was not written for, items that bring stored content in.
#[tokio::test]
async fn what_the_vendor_would_add_to_a_call_is_refused() {
    let server = start().await;
    let openai = issue(&server, model_key("openai", 100.0, &["/v1/**"])).await;
    let anthropic = issue(&server, model_key("anthropic", 100.0, &["/v1/**"])).await;
    let respond = |extra: Value| {
        let mut body = json!({"model": "gpt-4o-mini", "max_output_tokens": 16, "input": "hi"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let message = |extra: Value| {
        let mut body = json!({
            "model": "claude-3-5-haiku", "max_tokens": 16,
            "messages": [{"role": "user", "content": "hi"}],
        });
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let no_headers: Headers = &[];
    let refused: Vec<(&str, &str, Value, Headers)> = vec![
        // Keys of items and parts beyond those metered: stored audio, or a reference item
        // smuggled into `instructions`, or an unknown key on a system block.
        (
            "openai",
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "max_tokens": 4, "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "audio": {"id": "audio_1"}},
            ]}),
            no_headers,
        ),
        (
            "openai",
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "max_tokens": 4, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi", "file_id": "file_1"}]},
            ]}),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({"instructions": [{"id": "msg_1"}]})),
            no_headers,
        ),
        (
            "anthropic",
            "/v1/messages",
            message(
                json!({"system": [{"type": "text", "text": "be brief", "citations": [{"document_index": 0}]}]}),
            ),
            no_headers,
        ),
        (
            "anthropic",
            "/v1/messages",
            message(json!({"system": ["be brief"]})),
            no_headers,
        ),
        // An item referenced by id alone brings stored input the request does not show.
        (
            "openai",
            "/v1/responses",
            respond(json!({"input": [{"id": "msg_1"}]})),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]})),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({"input": [{"type": "item_reference", "id": "msg_1"}]})),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({"input": [{"role": "user", "content": [{"text": "untyped"}]}]})),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({"prompt": {"id": "pmpt_1"}})),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({"background": true})),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({"conversation": "conv_1"})),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({"service_tier": "priority"})),
            no_headers,
        ),
        (
            "openai",
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "messages": [], "prediction": {"type": "content", "content": "x"}}),
            no_headers,
        ),
        (
            "openai",
            "/v1/responses",
            respond(json!({})),
            &[("openai-beta", "responses=v2")],
        ),
        (
            "anthropic",
            "/v1/messages",
            message(json!({"container": "container_1"})),
            no_headers,
        ),
        (
            "anthropic",
            "/v1/messages",
            message(json!({"mcp_servers": []})),
            no_headers,
        ),
        (
            "anthropic",
            "/v1/messages",
            message(json!({"service_tier": "priority"})),
            no_headers,
        ),
        (
            "anthropic",
            "/v1/messages",
            message(json!({})),
            &[("anthropic-beta", "output-128k-2025-02-19")],
        ),
        (
            "anthropic",
            "/v1/messages",
            message(json!({})),
            &[("anthropic-beta", "context-1m-2025-08-07")],
        ),
    ];
    for (vendor, path, body, headers) in &refused {
        let key = if *vendor == "openai" {
            &openai
        } else {
            &anthropic
        };
        let (status, answer) =
            send(model_call(&server, vendor, token(key), path, body, headers)).await;
        assert_eq!(
            (status, &answer["code"]),
            (400, &json!("unmeterable_request")),
            "{vendor} {path} {body} {headers:?}: {answer}"
        );
    }
    // A vault token spelled with JSON escapes is still a vault token.
    let escaped = format!(r"\u0076\u006b{}", &token(&openai)[2..]);
    let (status, answer) = send(
        http()
            .post(format!("{}/openai/v1/embeddings", server.url()))
            .bearer_auth(token(&openai))
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"model":"text-embedding-3-small","input":"{escaped}"}}"#
            )),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        server.sandbox().unwrap().received().is_empty(),
        "nothing reached the vendor"
    );
}

/// The call as the vendor bills it: at the standard tier (the priced one) whatever the client
/// left to the vendor, with the tool prompt the request does not show, settled once it ends.
#[tokio::test]
async fn calls_are_billed_as_metered_tier_tools_and_endings() {
    let server = start().await;
    let openai = issue(&server, model_key("openai", 1.0, &["/v1/**"])).await;
    let anthropic = issue(&server, model_key("anthropic", 1.0, &["/v1/**"])).await;

    // Left to the vendor (`auto`, or nothing), the tier is pinned to the standard one.
    for tier in [None, Some("auto")] {
        let mut body = json!({"model": "gpt-4o-mini", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]});
        if let Some(tier) = tier {
            body["service_tier"] = json!(tier);
        }
        let (status, answer) = send(model_call(
            &server,
            "openai",
            token(&openai),
            "/v1/chat/completions",
            &body,
            &[],
        ))
        .await;
        assert_eq!((status, &answer["service_tier"]), (200, &json!("default")));
    }
    let tiers: Vec<Value> = server
        .sandbox()
        .unwrap()
        .received()
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["service_tier"].clone())
        .collect();
    assert_eq!(tiers, [json!("default"), json!("default")]);

    // Anthropic adds a tool-use system prompt of its own: the reservation covers it.
    let with_tools = json!({
        "model": "claude-3-5-haiku", "max_tokens": 4,
        "messages": [{"role": "user", "content": "x"}],
        "tools": [{"name": "f", "input_schema": {"type": "object"}}],
    });
    let (status, answer) = send(model_call(
        &server,
        "anthropic",
        token(&anthropic),
        "/v1/messages",
        &with_tools,
        &[],
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    let input = answer["usage"]["input_tokens"].as_u64().unwrap();
    assert!(
        input > with_tools.to_string().len() as u64,
        "the sandbox bills the hidden prompt: {input} tokens"
    );
    let received = server.sandbox().unwrap().received();
    let forwarded: Value = serde_json::from_slice(&received.last().unwrap().body).unwrap();
    assert_eq!(forwarded["service_tier"], "standard_only");
    let events = settled_events(&server, &anthropic, 1).await;
    let call = &events[0];
    let cost = Usage {
        input,
        cached_input: 0,
        cache_write: 0,
        output: 4,
    }
    .cost(&price("anthropic", "claude-3-5-haiku"));
    assert_eq!(micros(call, "settled_usd"), cost.micros(), "{call}");
    assert!(
        micros(call, "reserved_usd") >= cost.micros(),
        "reserved at least what was billed: {call}"
    );

    // An Anthropic stream cut after `message_start` (which reports one output token so far)
    // keeps its reservation: its output was still growing.
    let streamed = json!({
        "model": "claude-3-5-haiku", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "cut me"}],
    });
    let response = model_call(
        &server,
        "anthropic",
        token(&anthropic),
        "/v1/messages",
        &streamed,
        &[
            ("x-sandbox-cut-after", "4"),
            ("x-sandbox-chunk-delay-ms", "20"),
        ],
    )
    .send()
    .await
    .unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.bytes().await.is_err(), "the stream breaks");
    let events = unsettled_events(&server, &anthropic, 1).await;
    assert!(micros(&events[0], "reserved_usd") > 0, "{events:?}");

    // A response stopped by its `max_output_tokens` ends `incomplete`, and settles on its usage.
    let response = model_call(
        &server,
        "openai",
        token(&openai),
        "/v1/responses",
        &json!({"model": "gpt-4o-mini", "max_output_tokens": 3, "input": "a b", "stream": true}),
        &[("x-sandbox-output-tokens", "50")],
    )
    .send()
    .await
    .unwrap();
    let text = response.text().await.unwrap();
    assert!(text.contains("response.incomplete"), "{text}");
    let view = settled_view(&server, &openai).await;
    assert_eq!(micros(&view, "reserved_usd"), 0, "settled: {view}");
}

/// The output limit a call is reserved for is the one the vendor is held to: an operator's
/// ceiling below the vendor's own bounds the bill, not only the reservation.
#[tokio::test]
async fn the_vendor_is_held_to_the_output_limit_reserved_for() {
    let ceiling = |mut table: PriceTable, model: &str| {
        let mut price = table.get(model).unwrap().clone();
        price.max_output_tokens = 100;
        table.insert(model, price);
        table
    };
    let server = start_with(|config| {
        for vendor in &mut config.vendors {
            match vendor.name.as_str() {
                "openai" => {
                    vendor.meter = Meter::OpenAi(OpenAiMeter::new(ceiling(
                        PriceTable::openai(),
                        "gpt-4o-mini",
                    )))
                }
                "anthropic" => {
                    vendor.meter = Meter::Anthropic(AnthropicMeter::new(ceiling(
                        PriceTable::anthropic(),
                        "claude-3-5-haiku",
                    )))
                }
                _ => {}
            }
        }
    })
    .await;
    let openai = issue(&server, model_key("openai", 1.0, &["/v1/**"])).await;
    let anthropic = issue(&server, model_key("anthropic", 1.0, &["/v1/**"])).await;
    let chat = |limit: Option<(&str, u64)>| {
        let mut body =
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
        if let Some((name, limit)) = limit {
            body[name] = json!(limit);
        }
        body
    };
    // (vendor, key, path, body, the limit the vendor must see under that name)
    let calls = [
        (
            "openai",
            &openai,
            "/v1/chat/completions",
            chat(Some(("max_tokens", 1_000))),
            ("max_tokens", 100),
        ),
        (
            "openai",
            &openai,
            "/v1/chat/completions",
            chat(None),
            ("max_completion_tokens", 100),
        ),
        (
            "openai",
            &openai,
            "/v1/chat/completions",
            chat(Some(("max_completion_tokens", 40))),
            ("max_completion_tokens", 40),
        ),
        (
            "openai",
            &openai,
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 5_000}),
            ("max_output_tokens", 100),
        ),
        (
            "anthropic",
            &anthropic,
            "/v1/messages",
            json!({"model": "claude-3-5-haiku", "max_tokens": 1_000, "messages": [{"role": "user", "content": "hi"}]}),
            ("max_tokens", 100),
        ),
    ];
    for (vendor, key, path, body, (name, limit)) in calls {
        let (status, answer) = send(model_call(
            &server,
            vendor,
            token(key),
            path,
            &body,
            &[("x-sandbox-output-tokens", "500")],
        ))
        .await;
        assert_eq!(status, 200, "{answer}");
        let received = server.sandbox().unwrap().received();
        let forwarded: Value = serde_json::from_slice(&received.last().unwrap().body).unwrap();
        assert_eq!(forwarded[name], limit, "{vendor}{path}: {forwarded}");
        let output = ["completion_tokens", "output_tokens"]
            .iter()
            .find_map(|field| answer["usage"][field].as_u64())
            .unwrap();
        assert_eq!(output, limit, "the vendor stopped at the limit: {answer}");
    }
    for key in [&openai, &anthropic] {
        for call in settled_events(&server, key, if key == &openai { 4 } else { 1 }).await {
            assert!(
                micros(&call, "settled_usd") <= micros(&call, "reserved_usd"),
                "billed within the reservation: {call}"
            );
        }
    }
}

/// A model call the vendor refuses (rate limited, overloaded, failed) generated nothing and
/// costs nothing, streamed or not; its status is recorded.
#[tokio::test]
async fn a_model_call_the_vendor_refuses_settles_to_zero() {
    let server = start().await;
    let openai = issue(&server, model_key("openai", 1.0, &["/v1/**"])).await;
    let anthropic = issue(&server, model_key("anthropic", 1.0, &["/v1/**"])).await;
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 10, "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let message = json!({"model": "claude-3-5-haiku", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    for (vendor, key, path, body, refused) in [
        ("openai", &openai, "/v1/chat/completions", &chat, "429"),
        ("openai", &openai, "/v1/chat/completions", &chat, "500"),
        ("anthropic", &anthropic, "/v1/messages", &message, "529"),
    ] {
        let (status, answer) = send(model_call(
            &server,
            vendor,
            token(key),
            path,
            body,
            &[("x-sandbox-refuse", refused)],
        ))
        .await;
        assert_eq!(status.to_string(), refused, "{answer}");
        assert!(
            answer["error"]["type"].is_string(),
            "the vendor's error: {answer}"
        );
    }
    let calls = settled_events(&server, &openai, 2).await;
    let anthropic_calls = settled_events(&server, &anthropic, 1).await;
    for call in calls.iter().chain(&anthropic_calls) {
        assert!(micros(call, "reserved_usd") > 0, "{call}");
        assert_eq!(micros(call, "settled_usd"), 0, "{call}");
        assert!(call["upstream_status"].as_u64().unwrap() >= 429, "{call}");
    }
    for key in [&openai, &anthropic] {
        let view = settled_view(&server, key).await;
        assert_eq!(micros(&view, "spent_today_usd"), 0, "{view}");
    }
}

/// A vendor that bills more than was reserved is recorded in full, and from then on the key,
/// past its cap, is refused even its free calls (the proxy forgets what it held of the key).
#[tokio::test]
async fn a_call_billed_past_the_cap_stops_the_key() {
    let server = start().await;
    let key = issue(&server, model_key("openai", 0.05, &["/v1/**"])).await;
    let models = |server: &Server| {
        http()
            .get(format!("{}/openai/v1/models", server.url()))
            .bearer_auth(token(&key))
    };
    assert_eq!(
        send(models(&server)).await.0,
        200,
        "the key is held in memory now"
    );
    let (status, answer) = send(model_call(
        &server,
        "openai",
        token(&key),
        "/v1/chat/completions",
        &json!({"model": "gpt-4o", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}),
        &[("x-sandbox-input-tokens", "100000")],
    ))
    .await;
    assert_eq!(status, 200, "{answer}");
    let view = settled_view(&server, &key).await;
    // 100,000 input tokens at $2.50 per million, and 4 output tokens at $10.
    assert_eq!(micros(&view, "spent_today_usd"), 250_040, "{view}");
    let (status, refused) = send(models(&server)).await;
    assert_eq!(
        (status, &refused["code"]),
        (429, &json!("cap_exhausted")),
        "{refused}"
    );
}

/// The key's calls once `count` of them have settled.
async fn settled_events(server: &Server, key: &Value, count: usize) -> Vec<Value> {
    key_events(server, key, count, |e| !e["settled_usd"].is_null()).await
}

/// The key's calls once `count` of them are left unsettled, their outcome unknown.
async fn unsettled_events(server: &Server, key: &Value, count: usize) -> Vec<Value> {
    key_events(server, key, count, |e| {
        e["settled_usd"].is_null() && e["reserved_usd"] != json!(0)
    })
    .await
}

async fn key_events(
    server: &Server,
    key: &Value,
    count: usize,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<Value> {
    let path = format!("/v1/keys/{}/events", key["id"].as_str().unwrap());
    let mut found = Vec::new();
    for _ in 0..200 {
        let events = admin_get(server, &path).await.1;
        found = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| wanted(e))
            .cloned()
            .collect();
        if found.len() >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(found.len(), count, "{found:?}");
    found
}

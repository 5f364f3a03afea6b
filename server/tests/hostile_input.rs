//! The hostile-input suite: requests built byte by byte (no client library to tidy them up), each
//! refused with its status and `code`, and none of them ever reaching the vendor.

mod common;

use common::*;
use serde_json::json;

/// What the request looks like: method, target, extra header lines, body.
struct Case {
    name: &'static str,
    method: &'static str,
    target: String,
    headers: Vec<String>,
    body: &'static str,
    status: u16,
    code: &'static str,
}

const FORM: &str = "content-type: application/x-www-form-urlencoded";

fn case(
    name: &'static str,
    method: &'static str,
    target: &str,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        name,
        method,
        target: target.to_owned(),
        headers: Vec::new(),
        body: "",
        status,
        code,
    }
}

fn with_headers(mut case: Case, headers: &[&str]) -> Case {
    case.headers.extend(headers.iter().map(|h| (*h).to_owned()));
    case
}

fn with_body(mut case: Case, body: &'static str) -> Case {
    case.body = body;
    case.headers.push(FORM.to_owned());
    case
}

fn cases() -> Vec<Case> {
    let charge = |name, body, status, code| {
        with_body(
            case(name, "POST", "/stripe/v1/payment_intents", status, code),
            body,
        )
    };
    let long_path = format!("/stripe/v1/customers/{}", "a".repeat(3000));
    let long_target = format!("/stripe/v1/customers?q={}", "a".repeat(9000));
    vec![
        // Path tricks: reject, never normalise.
        case(
            "dot-dot segment",
            "GET",
            "/stripe/v1/../v1/customers",
            400,
            "invalid_path",
        ),
        case(
            "dot segment",
            "GET",
            "/stripe/v1/./customers",
            400,
            "invalid_path",
        ),
        case(
            "encoded dot-dot, lower-case hex",
            "GET",
            "/stripe/v1/%2e%2e/charges",
            400,
            "invalid_path",
        ),
        case(
            "encoded dot-dot, upper-case hex",
            "GET",
            "/stripe/v1/%2E%2E/charges",
            400,
            "invalid_path",
        ),
        case(
            "mixed dot and encoded dot",
            "GET",
            "/stripe/v1/.%2E/charges",
            400,
            "invalid_path",
        ),
        case(
            "encoded slash",
            "GET",
            "/stripe/v1/customers%2F..%2Fcharges",
            400,
            "invalid_path",
        ),
        case(
            "encoded backslash",
            "GET",
            "/stripe/v1/customers%5C..%5Ccharges",
            400,
            "invalid_path",
        ),
        case(
            "empty segment",
            "GET",
            "/stripe/v1//customers",
            400,
            "invalid_path",
        ),
        case(
            "trailing slash",
            "GET",
            "/stripe/v1/customers/",
            400,
            "invalid_path",
        ),
        case("no upstream path", "GET", "/stripe", 400, "invalid_path"),
        case(
            "matrix parameter",
            "GET",
            "/stripe/v1/customers;jsessionid=1",
            400,
            "invalid_path",
        ),
        case(
            "encoded semicolon",
            "GET",
            "/stripe/v1/customers%3Bx",
            400,
            "invalid_path",
        ),
        case(
            "encoded NUL",
            "GET",
            "/stripe/v1/customers%00",
            400,
            "invalid_path",
        ),
        case(
            "double encoding",
            "GET",
            "/stripe/v1/customers%252F..%252Fcharges",
            400,
            "invalid_path",
        ),
        case(
            "needless escape of a letter",
            "GET",
            "/stripe/v1/%63ustomers",
            400,
            "invalid_path",
        ),
        case(
            "encoded space",
            "GET",
            "/stripe/v1/customers%20",
            400,
            "invalid_path",
        ),
        case(
            "encoded newline",
            "GET",
            "/stripe/v1/customers%0A",
            400,
            "invalid_path",
        ),
        case(
            "encoded non-ASCII",
            "GET",
            "/stripe/v1/customers%C3%A9",
            400,
            "invalid_path",
        ),
        case(
            "truncated escape",
            "GET",
            "/stripe/v1/customers%2",
            400,
            "invalid_path",
        ),
        case(
            "encoded question mark",
            "GET",
            "/stripe/v1/customers%3F/x",
            400,
            "invalid_path",
        ),
        case(
            "encoded hash",
            "GET",
            "/stripe/v1/customers%23x",
            400,
            "invalid_path",
        ),
        case(
            "wildcard fed an encoded dot",
            "GET",
            "/stripe/v1/payment_intents/%2E",
            400,
            "invalid_path",
        ),
        case(
            "wildcard fed a dot-dot",
            "GET",
            "/stripe/v1/payment_intents/..",
            400,
            "invalid_path",
        ),
        case(
            "climb out of an allowed prefix",
            "GET",
            "/stripe/v1/payment_intents/pi_1/../../charges",
            400,
            "invalid_path",
        ),
        case(
            "absolute-form target",
            "GET",
            "http://api.stripe.com/stripe/v1/customers",
            400,
            "invalid_path",
        ),
        case(
            "absolute-form target to another host",
            "GET",
            "http://evil.example/stripe/v1/customers",
            400,
            "invalid_path",
        ),
        case(
            "path over the size limit",
            "GET",
            &long_path,
            414,
            "invalid_path",
        ),
        case(
            "target over the size limit",
            "GET",
            &long_target,
            414,
            "invalid_path",
        ),
        // Allowlist matching is exact.
        case(
            "other case",
            "GET",
            "/stripe/v1/Customers",
            403,
            "endpoint_not_allowed",
        ),
        case(
            "longer segment",
            "GET",
            "/stripe/v1/customersx",
            403,
            "endpoint_not_allowed",
        ),
        case(
            "allowed path only in the query",
            "GET",
            "/stripe/v1/charges?next=/v1/customers",
            403,
            "endpoint_not_allowed",
        ),
        case(
            "deeper than the wildcard",
            "GET",
            "/stripe/v1/payment_intents/pi_1/capture",
            403,
            "endpoint_not_allowed",
        ),
        case(
            "vendor in upper case",
            "GET",
            "/STRIPE/v1/customers",
            403,
            "vendor_mismatch",
        ),
        case(
            "vendor with an encoded slash",
            "GET",
            "/stripe%2Fv1/customers",
            403,
            "vendor_mismatch",
        ),
        // Methods are matched exactly.
        case(
            "TRACE",
            "TRACE",
            "/stripe/v1/customers",
            405,
            "method_not_allowed",
        ),
        case(
            "OPTIONS",
            "OPTIONS",
            "/stripe/v1/customers",
            405,
            "method_not_allowed",
        ),
        case(
            "PATCH",
            "PATCH",
            "/stripe/v1/customers",
            405,
            "method_not_allowed",
        ),
        case(
            "lower-case get",
            "get",
            "/stripe/v1/customers",
            405,
            "method_not_allowed",
        ),
        case(
            "invented method",
            "BREW",
            "/stripe/v1/customers",
            405,
            "method_not_allowed",
        ),
        // Size limits on headers.
        with_headers(
            case(
                "headers over the size limit",
                "GET",
                "/stripe/v1/customers",
                431,
                "headers_too_large",
            ),
            &[&format!("x-pad: {}", "a".repeat(40_000))],
        ),
        // Stripe body tricks.
        charge(
            "duplicated amount",
            "amount=10&amount=100000&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "negative amount",
            "amount=-100&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "signed amount",
            "amount=%2B100&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "fractional amount",
            "amount=10.50&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "exponent amount",
            "amount=1e5&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "over-long amount",
            "amount=1234567890123&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "amount with padding",
            "amount=%20100&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "capitalised look-alike",
            "Amount=100000&amount=1&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "bracketed look-alike",
            "amount[]=100000&amount=1&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "NUL look-alike",
            "amount%00=100000&amount=1&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge("missing amount", "currency=usd", 400, "unmeterable_request"),
        charge("missing currency", "amount=100", 400, "unmeterable_request"),
        charge(
            "currency without a rate",
            "amount=100&currency=gbp",
            400,
            "unmeterable_request",
        ),
        charge(
            "duplicated currency",
            "amount=100&currency=usd&currency=jpy",
            400,
            "unmeterable_request",
        ),
        with_headers(
            case(
                "JSON body",
                "POST",
                "/stripe/v1/payment_intents",
                400,
                "unmeterable_request",
            ),
            &["content-type: application/json"],
        ),
        with_body(
            case(
                "amount in the query string",
                "POST",
                "/stripe/v1/payment_intents?amount=100000",
                400,
                "unmeterable_request",
            ),
            "amount=1&currency=usd",
        ),
        with_headers(
            with_body(
                case(
                    "two content types",
                    "POST",
                    "/stripe/v1/payment_intents",
                    400,
                    "unmeterable_request",
                ),
                "amount=1&currency=usd",
            ),
            &["content-type: application/json"],
        ),
        charge(
            "leading-bracket look-alike",
            "[amount]=100000&amount=1&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "trailing-bracket look-alike",
            "amount]=100000&amount=1&currency=usd",
            400,
            "unmeterable_request",
        ),
        charge(
            "semicolon-separated second amount",
            "amount=1;amount=100000&currency=usd",
            400,
            "unmeterable_request",
        ),
        with_body(
            case(
                "semicolon-separated query on a write",
                "POST",
                "/stripe/v1/payment_intents?x=1;amount=100000",
                400,
                "unmeterable_request",
            ),
            "amount=1&currency=usd",
        ),
        with_headers(
            with_body(
                case(
                    "gzip-encoded body",
                    "POST",
                    "/stripe/v1/customers",
                    400,
                    "unmeterable_request",
                ),
                "email=a",
            ),
            &["content-encoding: gzip"],
        ),
        Case {
            body: "email=a",
            ..with_headers(
                case(
                    "UTF-16 form body",
                    "POST",
                    "/stripe/v1/customers",
                    400,
                    "unmeterable_request",
                ),
                &["content-type: application/x-www-form-urlencoded; charset=utf-16"],
            )
        },
        case(
            "a route the meter does not know",
            "DELETE",
            "/stripe/v1/payment_intents/pi_1",
            400,
            "unmeterable_request",
        ),
        case(
            "CONNECT",
            "CONNECT",
            "api.stripe.com:443",
            405,
            "method_not_allowed",
        ),
        case("asterisk target", "OPTIONS", "*", 400, "invalid_path"),
        case(
            "empty vendor segment",
            "GET",
            "//stripe/v1/customers",
            400,
            "invalid_path",
        ),
        charge(
            "over the cap in one call",
            "amount=100000000&currency=usd",
            429,
            "cap_exhausted",
        ),
    ]
}

#[tokio::test]
async fn hostile_requests_are_refused_and_never_reach_the_vendor() {
    let server = start().await;
    let key = issue(
        &server,
        json!({
            "label": "hostile", "vendor": "stripe", "daily_usd_cap": 100, "expires_in": "5m",
            "allowed_endpoints": ["/v1/customers", "/v1/payment_intents", "/v1/payment_intents/*"],
        }),
    )
    .await;
    let auth = format!("authorization: Bearer {}", token(&key));
    let cases = cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let mut failures = Vec::new();
    for case in &cases {
        let mut headers: Vec<&str> = vec![&auth];
        headers.extend(case.headers.iter().map(String::as_str));
        let response = raw(
            server.addr(),
            &raw_request(case.method, &case.target, &headers, case.body),
        )
        .await;
        if response.status != case.status || response.body["code"] != case.code {
            failures.push(format!(
                "{}: expected {} {}, got {} {}",
                case.name, case.status, case.code, response.status, response.body
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(
        server.sandbox().unwrap().received_count(),
        0,
        "{:?}",
        server.sandbox().unwrap().received()
    );
}

#[tokio::test]
async fn token_tricks_are_refused_and_never_reach_the_vendor() {
    let server = start().await;
    let key = stripe_key(&server, "tokens", 100.0).await;
    let good = token(&key).to_owned();
    let mut bad_checksum = good.clone().into_bytes();
    let last = bad_checksum.len() - 1;
    bad_checksum[last] = if bad_checksum[last] == b'A' {
        b'B'
    } else {
        b'A'
    };
    let bad_checksum = String::from_utf8(bad_checksum).unwrap();
    let cases: Vec<(&str, Vec<String>, &str, u16, &str)> = vec![
        (
            "two Authorization headers",
            vec![
                format!("authorization: Bearer {good}"),
                format!("authorization: Bearer {good}"),
            ],
            "/stripe/v1/customers",
            400,
            "invalid_request",
        ),
        (
            "Basic scheme",
            vec![format!("authorization: Basic {good}")],
            "/stripe/v1/customers",
            401,
            "invalid_key",
        ),
        (
            "double space after Bearer",
            vec![format!("authorization: Bearer  {good}")],
            "/stripe/v1/customers",
            401,
            "invalid_key",
        ),
        (
            "token only in the query",
            vec![],
            &*Box::leak(format!("/stripe/v1/customers?api_key={good}").into_boxed_str()),
            400,
            "invalid_path",
        ),
        (
            "token in the path as well as the header",
            vec![format!("authorization: Bearer {good}")],
            &*Box::leak(format!("/stripe/v1/customers/{good}").into_boxed_str()),
            400,
            "invalid_path",
        ),
        (
            "token in another header as well",
            vec![
                format!("authorization: Bearer {good}"),
                format!("x-note: {good}"),
            ],
            "/stripe/v1/customers",
            400,
            "invalid_request",
        ),
        (
            "token in x-api-key for Stripe",
            vec![format!("x-api-key: {good}")],
            "/stripe/v1/customers",
            401,
            "invalid_key",
        ),
        (
            "bad checksum",
            vec![format!("authorization: Bearer {bad_checksum}")],
            "/stripe/v1/customers",
            401,
            "invalid_key",
        ),
        (
            "lower-cased token",
            vec![format!("authorization: Bearer {}", good.to_lowercase())],
            "/stripe/v1/customers",
            401,
            "invalid_key",
        ),
        (
            "truncated token",
            vec![format!("authorization: Bearer {}", &good[..good.len() - 1])],
            "/stripe/v1/customers",
            401,
            "invalid_key",
        ),
        (
            "token with a suffix",
            vec![format!("authorization: Bearer {good}x")],
            "/stripe/v1/customers",
            401,
            "invalid_key",
        ),
        (
            "a Stripe secret instead",
            vec!["authorization: Bearer sk_test_vaultkey_sandbox".to_owned()],
            "/stripe/v1/customers",
            401,
            "invalid_key",
        ),
    ];
    let mut failures = Vec::new();
    for (name, headers, target, status, code) in &cases {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let response = raw(server.addr(), &raw_request("GET", target, &headers, "")).await;
        if response.status != *status || response.body["code"] != *code {
            failures.push(format!(
                "{name}: expected {status} {code}, got {} {}",
                response.status, response.body
            ));
        }
        let message = response.body["message"].as_str().unwrap_or("");
        assert!(
            !message.contains(&good[3..20]),
            "{name}: the message echoes the token"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
}

#[tokio::test]
async fn credentials_and_account_switching_headers_never_travel_upstream() {
    let server = start().await;
    let key = stripe_key(&server, "headers", 100.0).await;
    let auth = format!("authorization: Bearer {}", token(&key));
    let target = "/stripe/v1/customers?limit=3&api_key=sk_live_other_account";
    let request = raw_request(
        "GET",
        target,
        &[
            &auth,
            "stripe-account: acct_someone_else",
            "stripe-context: ctx_1",
            "proxy-authorization: Basic eA==",
            "x-forwarded-for: 10.0.0.1",
            "forwarded: for=10.0.0.1",
            "x-http-method-override: DELETE",
            "connection: close, x-hop",
            "x-hop: 1",
            "x-api-key: something",
            "x-kept: yes",
        ],
        "",
    );
    let response = raw(server.addr(), &request).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let received = server.sandbox().unwrap().received();
    assert_eq!(received.len(), 1);
    let upstream = &received[0];
    assert_eq!(upstream.method, "GET");
    assert_eq!(upstream.path, "/stripe/v1/customers");
    assert_eq!(upstream.query.as_deref(), Some("limit=3"));
    let names: Vec<&str> = upstream.headers.iter().map(|(n, _)| n.as_str()).collect();
    for gone in [
        "stripe-account",
        "stripe-context",
        "proxy-authorization",
        "x-forwarded-for",
        "forwarded",
        "x-http-method-override",
        "x-hop",
        "x-api-key",
    ] {
        assert!(!names.contains(&gone), "{gone} was forwarded: {names:?}");
    }
    assert!(names.contains(&"x-kept"));
    let authorization: Vec<&str> = upstream
        .headers
        .iter()
        .filter(|(n, _)| n == "authorization")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(authorization, ["Bearer sk_test_vaultkey_sandbox"]);
    assert!(upstream.headers.iter().all(|(_, v)| !v.contains("vk_")));
}

/// Request smuggling: whatever the client's framing, the vendor gets one request, framed by the
/// proxy itself, with exactly the body the proxy read and checked.
#[tokio::test]
async fn conflicting_framing_never_smuggles_a_request_upstream() {
    let server = start().await;
    let key = stripe_key(&server, "smuggling", 100.0).await;
    let auth = format!("authorization: Bearer {}", token(&key));
    let smuggled = "POST /stripe/v1/payment_intents HTTP/1.1\r\nhost: x\r\ncontent-length: 25\r\n\r\namount=99999&currency=usd";
    let cases: Vec<Vec<u8>> = vec![
        // Content-Length and Transfer-Encoding together.
        format!(
            "POST /stripe/v1/customers HTTP/1.1\r\nhost: x\r\n{auth}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 12\r\ntransfer-encoding: chunked\r\n\r\n7\r\nemail=a\r\n0\r\n\r\n{smuggled}"
        )
        .into_bytes(),
        // Two different Content-Lengths.
        format!(
            "POST /stripe/v1/customers HTTP/1.1\r\nhost: x\r\n{auth}\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 7\r\ncontent-length: 120\r\n\r\nemail=a{smuggled}"
        )
        .into_bytes(),
        // A space before the colon of a header name.
        format!("GET /stripe/v1/customers HTTP/1.1\r\nhost: x\r\nauthorization : Bearer {}\r\n\r\n", token(&key)).into_bytes(),
        // Transfer-Encoding that is not chunked.
        format!(
            "POST /stripe/v1/customers HTTP/1.1\r\nhost: x\r\n{auth}\r\ntransfer-encoding: gzip, chunked\r\n\r\n7\r\nemail=a\r\n0\r\n\r\n"
        )
        .into_bytes(),
    ];
    for request in &cases {
        let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut stream, request)
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut answer),
        )
        .await;
    }
    let received = server.sandbox().unwrap().received();
    eprintln!(
        "smuggling: {} of {} requests reached the vendor",
        received.len(),
        cases.len()
    );
    assert!(
        received.iter().all(|r| r.path == "/stripe/v1/customers"),
        "{received:?}"
    );
    for upstream in &received {
        assert_eq!(
            upstream.body, b"email=a",
            "the vendor got exactly the checked body: {upstream:?}"
        );
        assert!(upstream
            .headers
            .iter()
            .all(|(name, _)| name != "transfer-encoding"));
    }
    assert_eq!(
        view(&server, &key).await["spent_today_usd"],
        json!(0),
        "no smuggled charge"
    );
}

/// A key the proxy holds in memory is refused as soon as its revocation answers, by id or by
/// label prefix, on a call with no body (the one that reads no database on its way).
#[tokio::test]
async fn a_key_held_in_memory_is_refused_once_revoked() {
    let server = start().await;
    let spec = |label: &str| {
        json!({
            "label": label, "vendor": "stripe", "daily_usd_cap": 5, "expires_in": "5m",
            "allowed_endpoints": ["/v1/customers"],
        })
    };
    let by_id = issue(&server, spec("held/one")).await;
    let by_prefix = issue(&server, spec("held-run/two")).await;
    let get = |key: &serde_json::Value| {
        let auth = format!("authorization: Bearer {}", token(key));
        let addr = server.addr();
        async move {
            raw(
                addr,
                &raw_request("GET", "/stripe/v1/customers", &[&auth], ""),
            )
            .await
        }
    };
    for key in [&by_id, &by_prefix] {
        assert_eq!(get(key).await.status, 200, "the key is now held in memory");
    }
    let forwarded = server.sandbox().unwrap().received_count();
    assert_eq!(revoke(&server, &by_id).await, 204);
    let (status, revoked) = admin(
        &server.url(),
        reqwest::Method::POST,
        "/v1/keys/revoke",
        Some(json!({"label_prefix": "held-run/"})),
    )
    .await;
    assert_eq!((status, revoked), (200, json!({"revoked": 1})));
    for key in [&by_id, &by_prefix] {
        let refused = get(key).await;
        assert_eq!(
            (refused.status, &refused.body["code"]),
            (401, &json!("key_revoked")),
            "{}",
            refused.body
        );
    }
    assert_eq!(server.sandbox().unwrap().received_count(), forwarded);
}

/// Content nested in a tool result (Anthropic) or a function call's output (OpenAI Responses)
/// is held to the same keys as a message's parts: a reference to a stored file is not text the
/// request shows.
#[tokio::test]
async fn model_content_nested_in_tool_results_is_held_to_the_metered_keys() {
    let server = start().await;
    let key = |vendor: &str| {
        json!({
            "label": "nested", "vendor": vendor, "daily_usd_cap": 5, "expires_in": "5m",
            "allowed_endpoints": ["/v1/**"],
        })
    };
    let openai = issue(&server, key("openai")).await;
    let anthropic = issue(&server, key("anthropic")).await;
    let stored_file = json!([{"type": "input_text", "text": "see", "file_id": "file_1"}]);
    let responses = json!({
        "model": "gpt-4o-mini", "max_output_tokens": 8,
        "input": [
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": stored_file},
        ],
    });
    let messages = json!({
        "model": "claude-3-5-haiku", "max_tokens": 8,
        "messages": [
            {"role": "user", "content": "use the tool"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                "content": [{"type": "text", "text": "see", "file_id": "file_1"}]}]},
        ],
    });
    for (key, path, body, auth, version) in [
        (
            &openai,
            "/openai/v1/responses",
            responses,
            "authorization: Bearer",
            None,
        ),
        (
            &anthropic,
            "/anthropic/v1/messages",
            messages,
            "x-api-key:",
            Some("anthropic-version: 2023-06-01"),
        ),
    ] {
        let auth = format!("{auth} {}", token(key));
        let body = body.to_string();
        let mut headers = vec![auth.as_str(), "content-type: application/json"];
        headers.extend(version);
        let response = raw(server.addr(), &raw_request("POST", path, &headers, &body)).await;
        assert_eq!(
            (response.status, &response.body["code"]),
            (400, &json!("unmeterable_request")),
            "{path}: {}",
            response.body
        );
    }
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
}

/// A key held in the server's memory carries the cap it was read with; a cap lowered in the
/// database since (an operator's UPDATE, or another server's change) holds at once for metered
/// calls, because the reservation reads the cap in its own transaction.
#[tokio::test]
async fn a_cap_lowered_behind_the_cache_holds_at_the_next_charge() {
    use sqlx::Connection;
    let db = TestDb::sqlite();
    let server = start_on(&db).await;
    let key = stripe_key(&server, "lowered", 100.0).await;
    assert_eq!(charge(&server, token(&key), 100).await.0, 200); // held in memory, cap $100
    let mut operator = sqlx::SqliteConnection::connect(db.url()).await.unwrap();
    sqlx::query("UPDATE keys SET daily_cap_micros = 10000000 WHERE id = ?")
        .bind(key["id"].as_str().unwrap())
        .execute(&mut operator)
        .await
        .unwrap();
    let before = server.sandbox().unwrap().received_count();
    let (status, refused) = charge(&server, token(&key), 5_000).await;
    assert_eq!(
        (status, &refused["code"], &refused["cap_usd"]),
        (429, &json!("cap_exhausted"), &json!(10)),
        "{refused}"
    );
    assert_eq!(server.sandbox().unwrap().received_count(), before);
}

/// Output limits written as look-alikes of a whole number (a float, an exponent, a string, a
/// negative, a number past f64), and numbers elsewhere that a parse-and-print could alter: each
/// call is refused, or reaches the vendor with a whole-number limit no larger than the model's
/// ceiling (the one reserved for) and every other number exactly as sent.
#[tokio::test]
async fn look_alike_output_limits_never_reach_the_vendor_above_what_was_reserved() {
    let server = start().await;
    let key = issue(
        &server,
        model_key("openai", 100.0, &["/v1/chat/completions"]),
    )
    .await;
    let ceiling = vault_key_server::meter::PriceTable::openai()
        .get("gpt-4o-mini")
        .unwrap()
        .max_output_tokens;
    let limits = [
        "1e6",
        "100.0",
        "1.5",
        "\"100\"",
        "-1",
        "1e400",
        "18446744073709551616",
        "0",
        "null",
        "true",
        "[100]",
        "{\"n\":1}",
        "100",
    ];
    let sandbox = server.sandbox().unwrap();
    let mut admitted = 0;
    for limit in limits {
        let body = format!(
            r#"{{"model":"gpt-4o-mini","max_completion_tokens":{limit},"temperature":0.30000000000000004,"seed":33333333333333333333333333333333333333320,"messages":[{{"role":"user","content":"hi"}}]}}"#
        );
        let before = sandbox.received_count();
        let (status, answer) = send(
            http()
                .post(format!("{}/openai/v1/chat/completions", server.url()))
                .bearer_auth(token(&key))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        let forwarded = sandbox.received();
        if status != 200 {
            assert_eq!(
                (status, answer["code"].as_str()),
                (400, Some("unmeterable_request")),
                "{limit}: {answer}"
            );
            assert_eq!(forwarded.len(), before, "{limit} was refused yet forwarded");
            continue;
        }
        admitted += 1;
        let sent = forwarded.last().unwrap();
        let text = String::from_utf8_lossy(&sent.body);
        let sent: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
        let forwarded_limit = sent["max_completion_tokens"].as_u64();
        assert!(
            forwarded_limit.is_some_and(|l| l <= ceiling),
            "{limit} forwarded as {text}"
        );
        // Numbers the meter does not read travel as the vendor will read them: the float
        // exactly, the huge integer as the same f64 it parses to.
        assert_eq!(
            sent["temperature"].as_f64(),
            Some(0.30000000000000004),
            "{text}"
        );
        assert_eq!(
            sent["seed"].as_f64(),
            Some(33333333333333333333333333333333333333320.0),
            "{text}"
        );
    }
    // Some look-alikes (`null`: no limit) are admitted, with the ceiling pinned in their place.
    assert!(
        admitted > 0,
        "every look-alike was refused: the forwarded branch went untested"
    );
}

/// A fresh key minted from `credential` for payment intents and customers, $20 a day.
fn minted(credential: &vault_key_wire::GrantCredential) -> (String, String) {
    let mut caveats = caveats_within(credential, time::OffsetDateTime::now_utc());
    caveats.allowed_endpoints = vec![
        "/v1/payment_intents".parse().unwrap(),
        "/v1/payment_intents/*".parse().unwrap(),
    ];
    (caveats.key_id.clone(), credential.mint(&caveats))
}

#[tokio::test]
async fn minted_key_and_grant_tricks_are_refused_and_never_reach_the_vendor() {
    use vault_key_wire::RunCaveats;
    let server = start().await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let (_, good) = minted(&credential);
    let grant = credential.token();
    let run = RunCaveats {
        run_id: format!("grt_{}", &vault_key_server::token::generate_key_id()[4..]),
        label_prefix: "run-7/r/".to_owned(),
        daily_cap_micros: 1_000_000,
        expires_at: (time::OffsetDateTime::now_utc() + time::Duration::minutes(5)).unix_timestamp(),
    };
    let mut of_run = caveats_within(&credential, time::OffsetDateTime::now_utc());
    of_run.label = "run-7/r/charge".to_owned();
    let in_run = credential.open_run(&run).mint(&of_run);
    // The run's key with its run block cut out: the key block and tag alone, checksum redone.
    let (_, key_and_tag) = in_run["vkm_".len()..in_run.len() - 6]
        .split_once('.')
        .unwrap();
    let unrun = format!("vkm_{key_and_tag}");
    let unrun = format!("{unrun}{}", vault_key_wire::checksum(&unrun));
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let bearer = format!("authorization: Bearer {good}");
    let intent = "/stripe/v1/payment_intents";
    let cases = vec![
        with_headers(
            case(
                "minted key only in the query",
                "GET",
                leak(format!("{intent}?key={good}")),
                400,
                "invalid_path",
            ),
            &[],
        ),
        with_headers(
            case(
                "minted key in the path as well",
                "GET",
                leak(format!("{intent}/{good}")),
                400,
                "invalid_path",
            ),
            &[&bearer],
        ),
        with_headers(
            case(
                "minted key in another header",
                "GET",
                intent,
                400,
                "invalid_request",
            ),
            &[&bearer, leak(format!("x-note: {good}"))],
        ),
        with_headers(
            case(
                "minted key in a header named by Connection",
                "GET",
                intent,
                400,
                "invalid_request",
            ),
            &[
                &bearer,
                "connection: x-note",
                leak(format!("x-note: {good}")),
            ],
        ),
        with_body(
            with_headers(
                case(
                    "minted key in the form body",
                    "POST",
                    intent,
                    400,
                    "invalid_request",
                ),
                &[&bearer, FORM],
            ),
            leak(format!("amount=100&currency=usd&description={good}")),
        ),
        with_body(
            with_headers(
                case(
                    "minted key form-escaped in the body",
                    "POST",
                    intent,
                    400,
                    "invalid_request",
                ),
                &[&bearer, FORM],
            ),
            leak(format!(
                "amount=100&currency=usd&description={}",
                good.replacen('v', "%76", 1)
            )),
        ),
        with_body(
            with_headers(
                case(
                    "minted key followed by text in the body",
                    "POST",
                    intent,
                    400,
                    "invalid_request",
                ),
                &[&bearer, FORM],
            ),
            leak(format!(
                "amount=100&currency=usd&description=see+{good}.com"
            )),
        ),
        with_body(
            with_headers(
                case(
                    "the grant's credential in the body",
                    "POST",
                    intent,
                    400,
                    "invalid_request",
                ),
                &[&bearer, FORM],
            ),
            leak(format!("amount=100&currency=usd&description={grant}")),
        ),
        with_headers(
            case(
                "the grant's credential as the key",
                "GET",
                intent,
                401,
                "invalid_key",
            ),
            &[leak(format!("authorization: Bearer {grant}"))],
        ),
        with_headers(
            case(
                "a minted key lower-cased",
                "GET",
                intent,
                401,
                "invalid_key",
            ),
            &[leak(format!(
                "authorization: Bearer {}",
                good.to_lowercase()
            ))],
        ),
        with_headers(
            case(
                "a run's key without its run",
                "GET",
                intent,
                401,
                "invalid_key",
            ),
            &[leak(format!("authorization: Bearer {unrun}"))],
        ),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let headers: Vec<&str> = case.headers.iter().map(String::as_str).collect();
        let response = raw(
            server.addr(),
            &raw_request(case.method, &case.target, &headers, case.body),
        )
        .await;
        if response.status != case.status || response.body["code"] != case.code {
            failures.push(format!(
                "{}: expected {} {}, got {} {}",
                case.name, case.status, case.code, response.status, response.body
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(server.sandbox().unwrap().received_count(), 0);
}

#[tokio::test]
async fn one_minted_key_used_for_the_first_time_everywhere_at_once_holds_its_cap() {
    let server = start().await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let (id, token) = minted(&credential);
    // Twenty first uses at once of a $20 key, $10 each: every one races to record the key.
    let answers =
        futures_util::future::join_all((0..20).map(|_| charge(&server, &token, 1000))).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert!(
        answers
            .iter()
            .all(|a| a.0 == 200 || a.1["code"] == "cap_exhausted"),
        "{answers:?}"
    );
    assert_eq!(charges_executed(std::slice::from_ref(&server)), 2);
    let key = get_key(&server, &id).await;
    assert_eq!(
        (
            micros(&key["spent_today_usd"]),
            micros(&key["reserved_usd"])
        ),
        (20_000_000, 0),
        "{key}"
    );
}

#[tokio::test]
async fn a_minted_keys_body_sent_after_its_holder_revoked_it_is_refused() {
    use tokio::io::AsyncWriteExt;
    let server = start().await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    for first_seen_before in [true, false] {
        let (id, token) = minted(&credential);
        if first_seen_before {
            assert_eq!(charge(&server, &token, 100).await.0, 200);
        }
        let body = "amount=300&currency=usd";
        let mut stream = send_head(
            &server,
            "/stripe/v1/payment_intents",
            &token,
            body.len() as u128,
        )
        .await;
        // The proxy admits the key on the head; its holder revokes it before the body arrives.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (status, answer) = send(
            http()
                .post(format!(
                    "{}/v1/grants/{}/revoke",
                    server.url(),
                    credential.id()
                ))
                .bearer_auth(credential.token())
                .json(&json!({ "ids": [id] })),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        stream.write_all(body.as_bytes()).await.unwrap();
        let (status, answer) = read_answer(stream).await;
        assert_eq!(
            (status, &answer["code"]),
            (401, &json!("key_revoked")),
            "{answer}"
        );
    }
    // Only the one charge made before the revocation reached the vendor.
    assert_eq!(charges_executed(std::slice::from_ref(&server)), 1);
}

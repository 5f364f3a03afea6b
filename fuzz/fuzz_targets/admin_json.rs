//! The admin API on any body, through a real server on loopback. Input: a route byte, then the
//! body (or, for the list route, the query string).
//!
//! Invariants: the server never answers 5xx to a body (its store is healthy), and every refusal
//! is JSON with a stable `code`.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vault_key_fuzz::choose;
use vault_key_server::{Server, ServerConfig};

const ADMIN: &str = "fuzz-admin-token-0123456789";

const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/keys"),
    ("POST", "/v1/keys/revoke"),
    ("GET", "/v1/keys?"),
];

struct Running {
    runtime: tokio::runtime::Runtime,
    addr: SocketAddr,
    _server: Server,
}

fn server() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime
            .block_on(Server::start(ServerConfig::sandbox(SecretString::from(
                ADMIN,
            ))))
            .expect("the server starts");
        Running {
            addr: server.addr(),
            runtime,
            _server: server,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&(method, path), body)) = choose(data, ROUTES) else {
        return;
    };
    let request = if method == "GET" {
        // Bytes the HTTP parser refuses in a request target (hyper's bare 400, before the
        // router: documented under Limits) are sent escaped, so the router sees every query.
        let mut request = format!("GET {path}").into_bytes();
        for &byte in body {
            if byte.is_ascii_graphic() && !b"\"#<>\\^`{|}".contains(&byte) {
                request.push(byte);
            } else {
                request.extend_from_slice(format!("%{byte:02X}").as_bytes());
            }
        }
        request.extend_from_slice(
            format!(
                " HTTP/1.1\r\nhost: fuzz\r\nauthorization: Bearer {ADMIN}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        request
    } else {
        let mut request = format!(
            "{method} {path} HTTP/1.1\r\nhost: fuzz\r\nauthorization: Bearer {ADMIN}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        request
    };
    let running = server();
    let answer = running.runtime.block_on(async {
        let mut stream = tokio::net::TcpStream::connect(running.addr).await.unwrap();
        stream.write_all(&request).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        answer
    });
    let text = String::from_utf8_lossy(&answer);
    let status: u16 = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {text:?}"));
    assert!(
        status < 500,
        "{status} for {:?}: {text}",
        String::from_utf8_lossy(body)
    );
    if status >= 400 {
        let json = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let json: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|_| panic!("a refusal not in JSON: {text}"));
        assert!(json["code"].is_string(), "a refusal without a code: {text}");
    }
});

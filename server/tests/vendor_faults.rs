//! A vendor that fails in the ways networks and servers do, after our request may have reached
//! it: an error status, a connection closed or reset once the request was sent, an answer cut off
//! after its headers. Each gets a clear answer, and no charge the vendor may have made is
//! forgotten: a reservation is released only when the vendor said it did nothing.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use vault_key_server::vendor::Upstream;
use vault_key_server::Server;

/// What the vendor does once it has read a whole request.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// `500` with Stripe's error body.
    ServerError,
    /// Closes the connection without a word.
    Close,
    /// Resets the connection (RST).
    Reset,
    /// Sends `200` and its headers, part of the body, then closes.
    CutOff,
}

/// A vendor on a loopback port that reads each request whole, then commits `fault`; returns its
/// URL and how many requests it read.
async fn faulty_vendor(fault: Fault) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&received);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counter = Arc::clone(&counter);
            tokio::spawn(async move {
                let mut stream = stream;
                if read_request(&mut stream).await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    commit(fault, stream).await;
                }
            });
        }
    });
    (url, received)
}

/// Reads one request's head and its `content-length` bytes of body.
async fn read_request(stream: &mut TcpStream) -> bool {
    let mut bytes = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Ok(n) = stream.read(&mut chunk).await else {
            return false;
        };
        if n == 0 {
            return false;
        }
        bytes.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text[..end]
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .map_or(0, |n| n.trim().parse().unwrap());
            if bytes.len() >= end + 4 + length {
                return true;
            }
        }
    }
}

async fn commit(fault: Fault, mut stream: TcpStream) {
    match fault {
        Fault::ServerError => {
            let body = r#"{"error": {"type": "api_error", "message": "boom"}}"#;
            let answer = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
        }
        Fault::Close => drop(stream),
        Fault::Reset => {
            let _ = stream.set_zero_linger();
            drop(stream);
        }
        Fault::CutOff => {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                      content-length: 400\r\n\r\n{\"id\": \"pi_3Q\", \"object\": \"payment_in",
                )
                .await;
            let _ = stream.flush().await;
        }
    }
}

/// A sandbox server whose Stripe is the faulty vendor.
async fn server_with(fault: Fault) -> (Server, Arc<AtomicUsize>) {
    let (url, received) = faulty_vendor(fault).await;
    let server = start_with(|config| {
        let stripe = config
            .vendors
            .iter_mut()
            .find(|vendor| vendor.name == "stripe")
            .unwrap();
        stripe.upstream = Upstream::Url(url.parse().unwrap());
    })
    .await;
    (server, received)
}

#[tokio::test]
async fn an_error_status_settles_to_zero() {
    let (server, received) = server_with(Fault::ServerError).await;
    let key = stripe_key(&server, "vendor-500", 100.0).await;
    let (status, body) = charge(&server, token(&key), 1000).await;
    assert_eq!(status, 500, "the vendor's own answer, relayed: {body}");
    assert_eq!(body["error"]["message"], "boom");
    assert_eq!(received.load(Ordering::SeqCst), 1);
    let view = view(&server, &key).await;
    assert_eq!(
        (
            micros(&view["spent_today_usd"]),
            micros(&view["reserved_usd"])
        ),
        (0, 0),
        "{view}"
    );
}

#[tokio::test]
async fn a_connection_lost_after_the_request_was_sent_keeps_the_reservation() {
    for fault in [Fault::Close, Fault::Reset] {
        let (server, received) = server_with(fault).await;
        let key = stripe_key(&server, "vendor-gone", 100.0).await;
        let (status, body) = charge(&server, token(&key), 1000).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (502, Some("upstream_unavailable")),
            "{fault:?}: {body}"
        );
        assert!(received.load(Ordering::SeqCst) >= 1, "{fault:?}");
        // The vendor had the request: it may have charged. The $10 stay held.
        let view = view(&server, &key).await;
        assert_eq!(
            (
                micros(&view["spent_today_usd"]),
                micros(&view["reserved_usd"])
            ),
            (0, 10_000_000),
            "{fault:?}: {view}"
        );
    }
}

#[tokio::test]
async fn an_answer_cut_off_after_its_headers_counts_the_charge() {
    let (server, received) = server_with(Fault::CutOff).await;
    let key = stripe_key(&server, "vendor-cut-off", 100.0).await;
    let (status, body) = charge(&server, token(&key), 1000).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (502, Some("upstream_unavailable")),
        "{body}"
    );
    assert_eq!(received.load(Ordering::SeqCst), 1);
    // The vendor said 200: the charge happened, whatever became of the rest of its answer.
    let view = view(&server, &key).await;
    assert_eq!(
        micros(&view["spent_today_usd"]) + micros(&view["reserved_usd"]),
        10_000_000,
        "{view}"
    );
    let events = admin_get(
        &server,
        &format!("/v1/keys/{}/events", key["id"].as_str().unwrap()),
    )
    .await
    .1;
    assert_eq!(
        events["events"][0]["upstream_status"],
        json!(200),
        "{events}"
    );
}

//! Where the token goes is the server's word, not the client's guess: a configured vendor whose
//! API takes its key in a header of its own (`auth_header = "x-acme-key"`) is reached by
//! `VaultKey::get` with the token in that header, because the issue response said so.

use axum::http::HeaderMap;
use axum::routing::get;
use axum::Router;
use secrecy::SecretString;
use vault_key::{Client, KeySpec, ResponseExt};
use vault_key_server::meter::Meter;
use vault_key_server::vendor::{rest_methods, ErrorEnvelope, Upstream, Vendor, VendorAuth};
use vault_key_server::{Server, ServerConfig};

const ADMIN: &str = "placement-admin-token-0123";

/// A vendor that answers 200 only to its real secret in `x-acme-key`.
async fn acme(headers: HeaderMap) -> (axum::http::StatusCode, &'static str) {
    match headers.get("x-acme-key").map(|v| v.as_bytes()) {
        Some(b"acme-real-secret") if !headers.contains_key("authorization") => {
            (axum::http::StatusCode::OK, "acme says hello")
        }
        _ => (axum::http::StatusCode::UNAUTHORIZED, "wrong key"),
    }
}

#[tokio::test]
async fn a_vendor_with_its_own_credential_header_is_reached_through_the_key() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", upstream.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(upstream, Router::new().route("/v1/things", get(acme)))
            .await
            .unwrap();
    });
    let mut config = ServerConfig::sandbox(SecretString::from(ADMIN));
    config.vendors.push(Vendor {
        name: "acme".to_owned(),
        upstream: Upstream::Url(upstream_url.parse().unwrap()),
        secret: SecretString::from("acme-real-secret"),
        auth: VendorAuth::Header(axum::http::HeaderName::from_static("x-acme-key")),
        meter: Meter::Flat(vault_key_wire::Usd::ZERO),
        methods: rest_methods(),
        free_routes: Vec::new(),
        envelope: ErrorEnvelope::Plain,
    });
    let server = Server::start(config).await.unwrap();
    let client = Client::new(server.url(), ADMIN).unwrap();
    // The server tells where each vendor's token goes, and what a spec may ask for.
    let info = client.info().await.unwrap();
    let acme_info = info.vendors.iter().find(|v| v.name == "acme").unwrap();
    assert_eq!(acme_info.token_placement.header, "x-acme-key");
    assert_eq!(acme_info.token_placement.prefix, "");
    assert_eq!(info.max_key_ttl, "1d");
    let spec = KeySpec::new("acme").cap_usd(1).endpoints(["/v1/things"]);
    client.check(&spec).await.unwrap();
    let too_long = spec.clone().ttl(std::time::Duration::from_secs(48 * 3600));
    assert!(matches!(
        client.check(&too_long).await,
        Err(vault_key::Error::InvalidSpec(_))
    ));
    assert!(matches!(
        client
            .check(&KeySpec::new("acmee").cap_usd(1).endpoints(["/v1/x"]))
            .await,
        Err(vault_key::Error::InvalidSpec(_))
    ));
    let key = client
        .issue(&KeySpec::new("acme").cap_usd(1).endpoints(["/v1/things"]))
        .await
        .unwrap();
    let answer = key
        .get("/v1/things")
        .send()
        .await
        .unwrap()
        .error_for_refusal()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert_eq!(answer.text().await.unwrap(), "acme says hello");
    key.revoke().await.unwrap();
    server.shutdown().await;
}

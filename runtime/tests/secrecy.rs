//! The token never shows: not in `Debug`, not in any error's `Display`.

mod common;

use common::*;
use secrecy::ExposeSecret;
use vault_key::{Client, Error, KeySpec, ResponseExt};

#[test]
fn debug_and_errors_never_contain_the_token() {
    let server = TestServer::start();
    runtime().block_on(async {
        let client = server.client();
        let key = client.issue(&stripe_spec("secrecy", 5)).await.unwrap();
        let token = key.token().expose_secret().to_owned();
        assert!(token.starts_with("vk_"));
        let fragment = &token[3..20];
        let shown = format!("{key:?} {:?} {client:?}", key.token());
        assert!(!shown.contains(fragment), "{shown}");
        assert!(shown.contains(key.id()), "Debug names the key by its id: {shown}");

        let mut errors: Vec<Error> = Vec::new();
        for (path, body) in [
            ("/v1/payment_intents", "amount=10000&currency=usd"), // cap_exhausted
            ("/v1/payment_intents", "amount=1.5&currency=usd"),   // unmeterable_request
            ("/v1/charges", "amount=1&currency=usd"),             // endpoint_not_allowed
        ] {
            let response = key
                .post(path)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
                .send()
                .await
                .unwrap();
            errors.push(response.error_for_refusal().await.unwrap_err());
        }
        let unreachable = Client::new("http://127.0.0.1:9", ADMIN).unwrap();
        errors.push(unreachable.issue(&stripe_spec("nowhere", 5)).await.unwrap_err());
        errors.push(client.issue(&KeySpec::new("paypal").cap_usd(5).endpoints(["/v1/x"])).await.unwrap_err());
        errors.push(client.issue(&KeySpec::new("stripe").endpoints(["/v1/x"])).await.unwrap_err());
        let id = key.id().to_owned();
        key.revoke().await.unwrap();
        assert_eq!(server.status(&id).await, "revoked");
        let revoked_key = client.issue(&stripe_spec("secrecy-2", 5)).await.unwrap();
        let second_token = revoked_key.token().expose_secret().to_owned();
        reqwest::Client::new()
            .delete(format!("{}/v1/keys/{}", server.url, revoked_key.id()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        errors.push(revoked_key.get("/v1/customers").send().await.unwrap().error_for_refusal().await.unwrap_err());

        let codes: Vec<Option<vault_key::ErrorCode>> = errors.iter().map(Error::code).collect();
        assert!(matches!(errors[0], Error::CapExhausted { .. }), "{}", errors[0]);
        assert!(matches!(errors[1], Error::UnmeterableRequest { .. }), "{}", errors[1]);
        assert!(matches!(errors[2], Error::EndpointNotAllowed { .. }), "{}", errors[2]);
        assert!(matches!(errors[3], Error::Unavailable(_)), "{}", errors[3]);
        assert!(matches!(&errors[4], Error::IssueRefused { field: Some(field), .. } if field == "vendor"), "{}", errors[4]);
        assert!(matches!(errors[5], Error::InvalidSpec(_)), "{}", errors[5]);
        assert!(matches!(errors[6], Error::KeyRevoked), "{}", errors[6]);
        assert_eq!(codes[0], Some(vault_key::ErrorCode::CapExhausted));
        for error in &errors {
            let shown = format!("{error} {error:?}");
            assert!(!shown.contains(fragment) && !shown.contains(&second_token[3..20]), "{shown}");
            assert!(!shown.contains(ADMIN), "{shown}");
        }
    });
}

#[test]
fn current_is_the_scoped_key_and_nothing_outside() {
    let server = TestServer::start();
    runtime().block_on(async {
        assert!(vault_key::current().is_none());
        let key = std::sync::Arc::new(
            server
                .client()
                .issue(&stripe_spec("scoped", 5))
                .await
                .unwrap(),
        );
        let id = key.id().to_owned();
        let seen = vault_key::scope(key, async {
            tokio::task::yield_now().await;
            vault_key::current().map(|k| k.id().to_owned())
        })
        .await;
        assert_eq!(seen, Some(id.clone()));
        assert!(vault_key::current().is_none());
        server.flush().await;
        assert_eq!(
            server.status(&id).await,
            "revoked",
            "the scope held the last reference"
        );
    });
}

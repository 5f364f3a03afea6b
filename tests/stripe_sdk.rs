//! The seed's question — do vault keys work with async-stripe? — answered with the unmodified SDK
//! (async-stripe 1.0) pointed at the proxy: its base URL is `key.base_url()`, its secret the vault
//! token. It creates and confirms a payment intent, and the proxy's refusals (cap, endpoint) come
//! back as the SDK's own typed `StripeError::Stripe` with our `code` inside, not retried although
//! the client is told to retry.

use secrecy::SecretString;
use stripe::{ClientBuilder, RequestStrategy, StripeError};
use stripe_core::payment_intent::{
    ConfirmPaymentIntent, CreatePaymentIntent, RetrievePaymentIntent,
};
use stripe_core::PaymentIntentStatus;
use stripe_types::Currency;
use vault_key::{Client, ExposeSecret, KeySpec};
use vault_key_server::{Server, ServerConfig};

const ADMIN: &str = "stripe-sdk-admin-token-0123";

#[tokio::test]
async fn the_unmodified_stripe_sdk_works_through_the_proxy() {
    let server = Server::start(ServerConfig::sandbox(SecretString::from(ADMIN)))
        .await
        .unwrap();
    let client = Client::new(server.url(), ADMIN).unwrap();
    let key = client
        .issue(
            &KeySpec::new("stripe")
                .cap_usd(25)
                .endpoints(["/v1/payment_intents", "/v1/payment_intents/*/confirm"]),
        )
        .await
        .unwrap();
    // What the README shows: the SDK gets the proxy as its base URL and the token as its key.
    let stripe = ClientBuilder::new(key.token().expose_secret())
        .url(key.base_url())
        .request_strategy(RequestStrategy::Retry(3))
        .build()
        .unwrap();

    let intent = CreatePaymentIntent::new(1000, Currency::USD)
        .send(&stripe)
        .await
        .unwrap();
    assert_eq!(intent.amount, 1000);
    assert_eq!(intent.status, PaymentIntentStatus::RequiresPaymentMethod);
    let confirmed = ConfirmPaymentIntent::new(intent.id.clone())
        .payment_method("pm_card_visa")
        .send(&stripe)
        .await
        .unwrap();
    assert_eq!(confirmed.status, PaymentIntentStatus::Succeeded);
    assert_eq!(confirmed.amount_received, 1000);

    // $10 of $25 spent: a $20 intent is over the cap.
    match CreatePaymentIntent::new(2000, Currency::USD)
        .send(&stripe)
        .await
    {
        Err(StripeError::Stripe(error, 429)) => {
            assert!(
                format!("{:?}", error.code).contains("cap_exhausted"),
                "{error:?}"
            );
            assert!(
                error
                    .message
                    .as_deref()
                    .is_some_and(|m| m.contains("daily cap")),
                "{error:?}"
            );
        }
        other => panic!("expected the SDK's typed 429, got {other:?}"),
    }
    // Reading an intent is not among the key's endpoints.
    match RetrievePaymentIntent::new(intent.id.clone())
        .send(&stripe)
        .await
    {
        Err(StripeError::Stripe(error, 403)) => {
            assert!(
                format!("{:?}", error.code).contains("endpoint_not_allowed"),
                "{error:?}"
            );
        }
        other => panic!("expected the SDK's typed 403, got {other:?}"),
    }

    // Each refusal reached the proxy once: `Stripe-Should-Retry: false` stopped the SDK's retries.
    // Refusals are recorded off the response path; wait for both rows.
    let mut denials = 0;
    for _ in 0..50 {
        let events: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/v1/keys/{}/events", server.url(), key.id()))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        denials = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["denied"].is_string())
            .count();
        if denials >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(denials, 2, "the SDK retried a refusal");
    key.revoke().await.unwrap();
    server.shutdown().await;
}

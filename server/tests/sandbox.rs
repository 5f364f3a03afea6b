//! The sandbox's Stripe lists as Stripe does: newest first, ten unless asked, at most a hundred,
//! pages by `starting_after` / `ending_before`.

use serde_json::Value;
use vault_key_server::vendor::SANDBOX_SECRET;
use vault_key_server::Sandbox;

#[tokio::test]
async fn the_sandbox_lists_like_stripe() {
    let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let base = sandbox.base_url("stripe");
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for amount in 1..=15 {
        let created: Value = http
            .post(format!("{base}/v1/payment_intents"))
            .bearer_auth(SANDBOX_SECRET)
            .form(&[
                ("amount", amount.to_string()),
                ("currency", "usd".to_owned()),
            ])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    let list = |query: String| {
        let http = http.clone();
        let url = format!("{base}/v1/payment_intents{query}");
        async move {
            let response = http
                .get(url)
                .bearer_auth(SANDBOX_SECRET)
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let page_ids = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();

    let (status, first) = list(String::new()).await;
    assert_eq!(status, 200);
    assert_eq!(page_ids(&first), newest_first[..10]);
    assert_eq!(first["has_more"], true);
    let (_, rest) = list(format!("?starting_after={}", newest_first[9])).await;
    assert_eq!(page_ids(&rest), newest_first[10..]);
    assert_eq!(rest["has_more"], false);
    let (_, before) = list(format!("?ending_before={}&limit=3", newest_first[10])).await;
    assert_eq!(page_ids(&before), newest_first[7..10]);
    assert_eq!(before["has_more"], true);
    let (_, all) = list("?limit=100".to_owned()).await;
    assert_eq!(page_ids(&all), newest_first);
    for query in ["?limit=0", "?limit=101", "?limit=ten"] {
        let (status, error) = list(query.to_owned()).await;
        assert_eq!(status, 400, "{query}: {error}");
        assert_eq!(error["error"]["param"], "limit", "{query}: {error}");
    }
    let (status, _) = list("?starting_after=pi_nothing".to_owned()).await;
    assert_eq!(status, 404);
    let (status, _) = list(format!(
        "?starting_after={}&ending_before={}",
        newest_first[5], newest_first[1]
    ))
    .await;
    assert_eq!(status, 400);
}

//! The dashboard in a real headless Chromium, driven through chromedriver: an operator signs in,
//! watches a runaway agent's key spend live while other runs go on, revokes that key with its
//! button, and the agent's next call through the proxy is refused — the other runs unharmed.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`apt-get install chromium chromium-driver`;
//! found on `PATH`, or at `VAULT_KEY_TEST_CHROMEDRIVER` / `VAULT_KEY_TEST_CHROMIUM`). Without
//! them the test says it was skipped, unless `VAULT_KEY_REQUIRE_CHROMIUM` is set (as `.ci/run`
//! does). With `VAULT_KEY_DASHBOARD_SCREENSHOT=path.png` it saves what the operator saw.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;
use vault_key::{Error, KeySpec};
use vault_key_examples::{create_payment_intent, serve, start_sandbox_server, tools};

/// A headless Chromium under chromedriver; both stop when this is dropped.
struct Chromium {
    browser: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

/// The program `name`, from the variable `env` or `PATH`.
fn program(env: &str, name: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Some(PathBuf::from(path));
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

impl Chromium {
    /// Starts one, or says why the test is skipped (`None`).
    async fn start(test: &str) -> Option<Chromium> {
        let (driver, chromium) = match (
            program("VAULT_KEY_TEST_CHROMEDRIVER", "chromedriver"),
            program("VAULT_KEY_TEST_CHROMIUM", "chromium"),
        ) {
            (Some(driver), Some(chromium)) => (driver, chromium),
            _ if std::env::var_os("VAULT_KEY_REQUIRE_CHROMIUM").is_none() => {
                eprintln!(
                    "skipped {test}: chromium and chromedriver are not installed \
                     (apt-get install chromium chromium-driver)"
                );
                return None;
            }
            _ => {
                panic!("VAULT_KEY_REQUIRE_CHROMIUM is set, but chromium or chromedriver is missing")
            }
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let driver = tokio::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().unwrap();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-extensions", "--no-first-run",
                    "--window-size=1280,860", format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let browser = loop {
            let connected =
                ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                    .capabilities(capabilities.clone())
                    .connect(&format!("http://127.0.0.1:{port}"))
                    .await;
            match connected {
                Ok(browser) => break browser,
                Err(error) if Instant::now() > deadline => panic!("chromedriver: {error}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Some(Chromium {
            browser,
            _driver: driver,
            _profile: profile,
        })
    }
}

/// The text of the first element `css` selects, once it exists.
async fn text_of(browser: &Client, css: &str) -> String {
    browser
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .text()
        .await
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_a_runaway_key_spend_and_stops_it_from_the_dashboard() {
    let Some(chromium) = Chromium::start("the dashboard test").await else {
        return;
    };
    let browser = &chromium.browser;
    let local = start_sandbox_server().await.unwrap();
    vault_key::init(local.client.clone());
    let backend = serve(tools::router()).await.unwrap();
    let base = local.server.url();

    // A quickstart-like load: a steady run whose tool calls each get (and end) their own key…
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let steady_call = {
        let http = http.clone();
        move || {
            let http = http.clone();
            async move {
                http.post(format!("http://{backend}/runs/run-steady/charge"))
                    .json(&json!({"amounts_cents": [100]}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        }
    };
    let steady = tokio::spawn({
        let steady_call = steady_call.clone();
        async move {
            loop {
                assert_eq!(steady_call().await.unwrap(), 200);
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    });
    // …and a runaway agent holding one key, charging $5 every 200 ms until it is stopped.
    let runaway = local
        .client
        .issue(
            &KeySpec::new("stripe")
                .cap_usd(500)
                .endpoints(["/v1/payment_intents"])
                .ttl(Duration::from_secs(600))
                .label("run-runaway/agent"),
        )
        .await
        .unwrap();
    let runaway_id = runaway.id().to_owned();
    let agent = tokio::spawn(async move {
        let mut charged = 0u32;
        loop {
            match create_payment_intent(&runaway, 500, |r| r).await {
                Ok(_) => charged += 1,
                Err(error) => return (charged, error),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // One refusal for the table of refusals: the agent tries a route its key does not allow.
    let stray = local
        .client
        .issue(
            &KeySpec::new("stripe")
                .cap_usd(5)
                .endpoints(["/v1/customers"])
                .label("run-steady/lookup"),
        )
        .await
        .unwrap();
    assert!(create_payment_intent(&stray, 100, |r| r).await.is_err());

    // Signing in: the dashboard sends the browser to the form, which takes the admin token.
    browser.goto(&format!("{base}/ui")).await.unwrap();
    assert_eq!(browser.current_url().await.unwrap().path(), "/ui/login");
    browser
        .find(Locator::Id("token"))
        .await
        .unwrap()
        .send_keys(&local.admin_token)
        .await
        .unwrap();
    browser
        .find(Locator::Id("sign-in"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let summary = text_of(browser, "#summary").await;
    assert_eq!(browser.current_url().await.unwrap().path(), "/ui");
    assert!(summary.contains("live key"), "{summary}");
    assert!(!browser
        .current_url()
        .await
        .unwrap()
        .as_str()
        .contains(&local.admin_token));

    // The runaway key's spend moves on the page without a reload.
    let spent = format!("#key-{runaway_id} .spent");
    let first = text_of(browser, &spent).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let later = loop {
        let now = text_of(browser, &spent).await;
        if now != first {
            break now;
        }
        assert!(Instant::now() < deadline, "the spend stayed at {first}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let dollars = |text: &str| text.trim_start_matches('$').parse::<f64>().unwrap();
    assert!(dollars(&later) > dollars(&first), "{first} → {later}");
    let refusal = text_of(browser, ".refusals .code").await;
    assert_eq!(refusal, "endpoint_not_allowed");
    if let Some(path) = std::env::var_os("VAULT_KEY_DASHBOARD_SCREENSHOT") {
        std::fs::write(path, browser.screenshot().await.unwrap()).unwrap();
    }

    // Revoke: the key's own button (found again if the live part was swapped meanwhile), and
    // yes to the question the page asks.
    let button = format!("#key-{runaway_id} button.revoke");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let clicked = match browser.find(Locator::Css(&button)).await {
            Ok(element) => element.click().await,
            Err(error) => Err(error),
        };
        match clicked {
            Ok(()) => {
                let question = browser.get_alert_text().await.unwrap();
                assert_eq!(
                    question,
                    format!("Revoke {runaway_id} (run-runaway/agent)?")
                );
                browser.accept_alert().await.unwrap();
                break;
            }
            Err(error) if Instant::now() > deadline => panic!("revoke button: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(
        text_of(browser, "#notice").await,
        format!("Revoked {runaway_id}.")
    );
    let url = browser.current_url().await.unwrap();
    assert_eq!((url.path(), url.query()), ("/ui", None));

    // The agent's next call was refused by the proxy; the steady run goes on.
    let (charged, error) = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("the runaway agent is stopped")
        .unwrap();
    assert!(matches!(error, Error::KeyRevoked), "{error:?}");
    assert!(charged >= 2, "the agent charged {charged} times");
    let view = local
        .admin_get::<vault_key_wire::KeyView>(&format!("/v1/keys/{runaway_id}"), &[])
        .await
        .unwrap();
    assert_eq!(view.status, vault_key_wire::KeyStatus::Revoked);
    assert_eq!(
        view.spent_today_usd.micros(),
        u64::from(charged) * 5_000_000
    );
    assert!(
        !steady.is_finished(),
        "the steady run failed: {:?}",
        steady.await
    );
    steady.abort();
    assert_eq!(steady_call().await.unwrap(), 200);
    assert!(!browser.source().await.unwrap().contains(&local.admin_token));
    chromium.browser.close().await.unwrap();
}

//! The dashboard at `/ui` over real HTTP, as a browser (or a page of another site) would reach
//! it: signing in, the session cookie, the CSRF token and the origin check on every form, what
//! the overview and a key's page show, and revoking a key, a label and a whole label prefix.
//! (`tests/dashboard.rs` in the workspace drives the same pages in a real Chromium.)

mod common;

use common::*;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use serde_json::Value;
use vault_key_server::Server;

/// A browser of the dashboard: its cookie, if signed in, and the origin its forms come from.
struct Browser {
    base: String,
    http: reqwest::Client,
    cookie: Option<String>,
}

/// A form's fields.
type Fields<'a> = Vec<(&'a str, &'a str)>;

/// A revocation that must be refused: what it is, its fields, its `Origin`, one more header,
/// and the code it gets.
type Attempt<'a> = (
    &'a str,
    Fields<'a>,
    Option<&'a str>,
    Option<(&'a str, &'a str)>,
    &'a str,
);

/// A dashboard answer: status, headers and the page.
struct Page {
    status: u16,
    headers: HeaderMap,
    body: String,
}

impl Page {
    fn location(&self) -> &str {
        self.headers[LOCATION].to_str().unwrap()
    }

    fn error_code(&self) -> &str {
        self.headers
            .get("vault-key-error")
            .map_or("", |v| v.to_str().unwrap())
    }

    /// The value of the first hidden `csrf` field of the page.
    fn csrf(&self) -> String {
        let start = self.body.find(r#"name="csrf" value=""#).expect("a form") + 19;
        let end = start + self.body[start..].find('"').unwrap();
        self.body[start..end].to_owned()
    }
}

impl Browser {
    fn new(server: &Server) -> Browser {
        Browser {
            base: server.url(),
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            cookie: None,
        }
    }

    /// This server's own origin, as a browser on one of its pages sends it.
    fn origin(&self) -> String {
        self.base.clone()
    }

    async fn get(&self, path: &str) -> Page {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        read(request).await
    }

    /// Posts a form, from `origin` (none: no `Origin` header), with extra headers.
    async fn post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        origin: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Page {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        if let Some(cookie) = &self.cookie {
            request = request.header("cookie", cookie);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        read(request).await
    }

    /// Signs in with the admin token; returns the session's CSRF token.
    async fn sign_in(&mut self) -> String {
        let origin = self.origin();
        let page = self
            .post("/ui/login", &[("token", ADMIN)], Some(&origin), &[])
            .await;
        assert_eq!(
            (page.status, page.location()),
            (303, "/ui"),
            "{}",
            page.body
        );
        let set_cookie = page.headers[SET_COOKIE].to_str().unwrap();
        self.cookie = Some(set_cookie.split(';').next().unwrap().to_owned());
        let overview = self.get("/ui").await;
        assert_eq!(overview.status, 200, "{}", overview.body);
        overview.csrf()
    }

    /// Revokes through the dashboard's form, as its own page sends it.
    async fn revoke(&self, csrf: &str, fields: &[(&str, &str)]) -> Page {
        let mut all = vec![("csrf", csrf)];
        all.extend_from_slice(fields);
        self.post("/ui/revoke", &all, Some(&self.origin()), &[])
            .await
    }
}

async fn read(request: reqwest::RequestBuilder) -> Page {
    let response = request.send().await.unwrap();
    Page {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.unwrap(),
    }
}

async fn status_of(server: &Server, key: &Value) -> String {
    view(server, key).await["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn id(key: &Value) -> &str {
    key["id"].as_str().unwrap()
}

#[tokio::test]
async fn signing_in_takes_the_admin_token_once_and_sets_a_strict_session_cookie() {
    let server = start().await;
    let mut browser = Browser::new(&server);

    // Not signed in: pages send the browser to the form; the live parts say 401.
    let page = browser.get("/ui").await;
    assert_eq!((page.status, page.location()), (303, "/ui/login"));
    let live = browser.get("/ui/live").await;
    assert_eq!((live.status, live.error_code()), (401, "unauthorized"));
    let form = browser.get("/ui/login").await;
    assert_eq!(form.status, 200);
    assert!(form
        .body
        .contains(r#"<form method="post" action="/ui/login""#));

    // A wrong token: the form again, with the code, and no cookie.
    let origin = browser.origin();
    let wrong = browser
        .post(
            "/ui/login",
            &[("token", "not-the-token")],
            Some(&origin),
            &[],
        )
        .await;
    assert_eq!((wrong.status, wrong.error_code()), (401, "unauthorized"));
    assert!(wrong.headers.get(SET_COOKIE).is_none());
    assert!(
        wrong.body.contains("That is not this server"),
        "{}",
        wrong.body
    );

    // The right token from another origin, or with no origin at all: refused, no cookie.
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let page = browser
            .post("/ui/login", &[("token", ADMIN)], origin, &[])
            .await;
        assert_eq!(
            (page.status, page.error_code()),
            (403, "cross_origin"),
            "{origin:?}"
        );
        assert!(page.headers.get(SET_COOKIE).is_none());
    }

    // The right token from the dashboard's own page: a session cookie fit for it.
    let page = browser
        .post("/ui/login", &[("token", ADMIN)], Some(&origin), &[])
        .await;
    assert_eq!((page.status, page.location()), (303, "/ui"));
    let cookie = page.headers[SET_COOKIE].to_str().unwrap();
    for attribute in [
        "HttpOnly",
        "Secure",
        "SameSite=Strict",
        "Path=/ui",
        "Max-Age=28800",
    ] {
        assert!(cookie.contains(attribute), "{attribute} missing: {cookie}");
    }
    assert!(!cookie.contains(ADMIN) && !page.location().contains(ADMIN));
    browser.cookie = Some(cookie.split(';').next().unwrap().to_owned());

    let overview = browser.get("/ui").await;
    assert_eq!(overview.status, 200, "{}", overview.body);
    assert!(
        !overview.body.contains(ADMIN),
        "the page shows the admin token"
    );
    let csp = overview.headers["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"));
    assert_eq!(overview.headers["cache-control"], "no-store");
    assert_eq!(overview.headers["x-frame-options"], "DENY");

    // A made-up session id is no session.
    let mut forged = Browser::new(&server);
    forged.cookie = Some("vault_key_ui=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned());
    assert_eq!(forged.get("/ui/live").await.status, 401);

    // Signing out ends the session on the server, whatever the browser keeps.
    let csrf = overview.csrf();
    let out = browser
        .post("/ui/logout", &[("csrf", &csrf)], Some(&origin), &[])
        .await;
    assert_eq!((out.status, out.location()), (303, "/ui/login"));
    assert!(out.headers[SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(browser.get("/ui/live").await.status, 401);
    server.shutdown().await;
}

#[tokio::test]
async fn a_revocation_needs_a_session_its_csrf_token_and_this_origin() {
    let server = start().await;
    let key = stripe_key(&server, "run-7/charge", 50.0).await;
    let mut browser = Browser::new(&server);
    let csrf = browser.sign_in().await;
    let mut other = Browser::new(&server);
    let other_csrf = other.sign_in().await;
    assert_ne!(csrf, other_csrf);
    let origin = browser.origin();
    let target = [("key", id(&key))];

    let mut anonymous = Browser::new(&server);
    let page = anonymous.revoke(&csrf, &target).await;
    assert_eq!((page.status, page.error_code()), (401, "unauthorized"));
    anonymous.cookie = Some("vault_key_ui=".to_owned());
    assert_eq!(anonymous.revoke(&csrf, &target).await.status, 401);

    let theirs = Some("http://evil.example");
    let ours = Some(origin.as_str());
    let refusals: [Attempt; 6] = [
        (
            "no CSRF token",
            vec![("key", id(&key))],
            ours,
            None,
            "csrf_token_invalid",
        ),
        (
            "a wrong CSRF token",
            vec![("csrf", "x"), ("key", id(&key))],
            ours,
            None,
            "csrf_token_invalid",
        ),
        (
            "another session's CSRF token",
            vec![("csrf", &other_csrf), ("key", id(&key))],
            ours,
            None,
            "csrf_token_invalid",
        ),
        (
            "another origin",
            vec![("csrf", &csrf), ("key", id(&key))],
            theirs,
            None,
            "cross_origin",
        ),
        (
            "no origin",
            vec![("csrf", &csrf), ("key", id(&key))],
            None,
            None,
            "cross_origin",
        ),
        (
            "a cross-site fetch",
            vec![("csrf", &csrf), ("key", id(&key))],
            ours,
            Some(("sec-fetch-site", "cross-site")),
            "cross_origin",
        ),
    ];
    for (case, fields, origin, header, code) in refusals {
        let headers: Vec<(&str, &str)> = header.into_iter().collect();
        let page = browser.post("/ui/revoke", &fields, origin, &headers).await;
        assert_eq!(
            (page.status, page.error_code()),
            (403, code),
            "{case}: {}",
            page.body
        );
        assert!(page.body.contains(code), "{case}: the page names the code");
    }
    assert_eq!(status_of(&server, &key).await, "active");
    assert_eq!(charge(&server, token(&key), 100).await.0, 200);

    // From its own page, with its own token: revoked, and the proxy refuses the key.
    let page = browser
        .revoke(&csrf, &[("key", id(&key)), ("back", "key")])
        .await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(page.location(), format!("/ui/keys/{}", id(&key)));
    assert_eq!(status_of(&server, &key).await, "revoked");
    let (status, body) = charge(&server, token(&key), 100).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("key_revoked")));
    // The page it lands on says what happened, once.
    let landed = browser.get(page.location()).await.body;
    let notice = format!(r#"<p class="notice" id="notice">Revoked {}.</p>"#, id(&key));
    assert!(landed.contains(&notice), "{landed}");
    assert!(landed.contains(r#"id="status">revoked</span>"#));
    assert!(!browser.get(page.location()).await.body.contains(&notice));
    let again = browser.revoke(&csrf, &target).await;
    assert_eq!((again.status, again.location()), (303, "/ui"));
    assert!(browser
        .get("/ui")
        .await
        .body
        .contains("was already revoked."));
    server.shutdown().await;
}

#[tokio::test]
async fn the_overview_groups_live_keys_by_run_and_revokes_a_label_or_a_whole_prefix() {
    let server = start().await;
    let charging = stripe_key(&server, "run-1/charge", 20.0).await;
    let reading = stripe_key(&server, "run-1/read", 5.0).await;
    let neighbour = stripe_key(&server, "run-10/charge", 5.0).await;
    let checkout = stripe_key(&server, "checkout", 5.0).await;
    let checkout2 = stripe_key(&server, "checkout2", 5.0).await;
    let escaped = stripe_key(&server, "<script>alert(1)</script>", 5.0).await;
    assert_eq!(charge(&server, token(&charging), 250).await.0, 200);
    let (status, _) = stripe_form(
        &server.url(),
        token(&reading),
        "/v1/refunds",
        "charge=ch_1",
        &[],
    )
    .await;
    assert_eq!(status, 403);
    refusals_recorded(&server, &reading, 1).await;

    let mut browser = Browser::new(&server);
    let csrf = browser.sign_in().await;
    let overview = browser.get("/ui").await.body;
    assert!(overview.contains("6 live keys"), "{overview}");
    assert!(
        overview.contains(r#"<a href="/ui?prefix=run-1%2F">run-1/</a>"#),
        "{overview}"
    );
    assert!(overview.contains(r#"<a href="/ui?prefix=run-10%2F">run-10/</a>"#));
    assert!(overview.contains(r#"<input type="hidden" name="label" value="checkout">"#));
    assert!(
        overview.contains(r#"<meter min="0" max="25" high="20" optimum="0" value="2.5">"#),
        "run-1's bar: {overview}"
    );
    assert!(overview.contains(r#"<span class="spent">$2.50</span> of $20"#));
    // The latest refusals, with their codes.
    assert!(
        overview.contains(r#"<code class="code">endpoint_not_allowed</code>"#),
        "{overview}"
    );
    assert!(overview.contains("POST /v1/refunds"));
    // A label is text, never markup.
    assert!(!overview.contains("<script>alert"));
    assert!(
        overview.contains("&#60;script&#62;alert(1)&#60;/script&#62;")
            || overview.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{overview}"
    );

    // One run opened: its labels are the groups.
    let run = browser.get("/ui?prefix=run-1%2F").await.body;
    assert!(run.contains("2 live keys"), "{run}");
    assert!(!run.contains(id(&neighbour)));
    let live = browser.get("/ui/live?prefix=run-1%2F").await;
    assert_eq!(live.status, 200);
    assert!(live.body.contains(id(&charging)) && !live.body.contains("<html"));

    // A key's page: its calls, the refused one with its code.
    let page = browser
        .get(&format!("/ui/keys/{}", id(&reading)))
        .await
        .body;
    assert!(page.contains("refused: endpoint_not_allowed"), "{page}");
    assert!(page.contains(r#"<span class="status status-active" id="status">active</span>"#));

    // The whole run at once; its neighbour run-10/ shares the characters, not the prefix.
    let page = browser
        .revoke(&csrf, &[("label_prefix", "run-1/"), ("at", "")])
        .await;
    assert_eq!((page.status, page.location()), (303, "/ui"));
    let landed = browser.get("/ui").await.body;
    assert!(landed.contains("Revoked 2 keys under run-1/."), "{landed}");
    for key in [&charging, &reading] {
        assert_eq!(status_of(&server, key).await, "revoked");
    }
    assert_eq!(status_of(&server, &neighbour).await, "active");

    // One label exactly: `checkout`, not `checkout2`.
    let page = browser
        .revoke(&csrf, &[("label", "checkout"), ("at", "check")])
        .await;
    assert_eq!((page.status, page.location()), (303, "/ui?prefix=check"));
    let landed = browser.get(page.location()).await.body;
    assert!(
        landed.contains("Revoked 1 key labelled checkout."),
        "{landed}"
    );
    assert_eq!(status_of(&server, &checkout).await, "revoked");
    assert_eq!(status_of(&server, &checkout2).await, "active");
    assert_eq!(status_of(&server, &escaped).await, "active");

    // A link cannot put words in the dashboard's mouth.
    let overview = browser.get("/ui?revoked=1000&notice=Revoked").await.body;
    assert!(
        overview.contains("3 live keys") && !overview.contains(r#"id="notice""#),
        "{overview}"
    );
    assert!(!overview.contains(id(&charging)));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_forms_and_pages_get_a_clear_code_and_change_nothing() {
    let server = start().await;
    let key = stripe_key(&server, "run-3/charge", 5.0).await;
    let mut browser = Browser::new(&server);
    let csrf = browser.sign_in().await;
    let origin = browser.origin();

    let cases: Vec<(&str, Fields, u16, &str)> = vec![
        (
            "nothing named",
            vec![("csrf", &csrf)],
            400,
            "invalid_request",
        ),
        (
            "two things named",
            vec![
                ("csrf", &csrf),
                ("key", id(&key)),
                ("label", "run-3/charge"),
            ],
            400,
            "invalid_request",
        ),
        (
            "a field twice",
            vec![("csrf", &csrf), ("key", id(&key)), ("key", "key_x")],
            400,
            "invalid_request",
        ),
        (
            "an empty prefix (every key)",
            vec![("csrf", &csrf), ("label_prefix", "")],
            400,
            "invalid_request",
        ),
        (
            "a prefix with a control character",
            vec![("csrf", &csrf), ("label_prefix", "run\u{7}")],
            400,
            "invalid_request",
        ),
        (
            "not a key id",
            vec![("csrf", &csrf), ("key", "../v1/keys")],
            400,
            "invalid_request",
        ),
        (
            "an unknown key",
            vec![("csrf", &csrf), ("key", "key_0000000000000000000000")],
            404,
            "not_found",
        ),
    ];
    for (case, fields, status, code) in cases {
        let page = browser
            .post("/ui/revoke", &fields, Some(&origin), &[])
            .await;
        assert_eq!(
            (page.status, page.error_code()),
            (status, code),
            "{case}: {}",
            page.body
        );
    }
    let huge = "x".repeat(20_000);
    let page = browser
        .post(
            "/ui/revoke",
            &[("csrf", &csrf), ("label", &huge)],
            Some(&origin),
            &[],
        )
        .await;
    assert_eq!((page.status, page.error_code()), (413, "request_too_large"));
    let json = browser
        .http
        .post(format!("{}/ui/revoke", browser.base))
        .header("origin", &origin)
        .header("cookie", browser.cookie.as_deref().unwrap())
        .json(&serde_json::json!({"csrf": csrf, "key": id(&key)}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), 400);
    assert_eq!(status_of(&server, &key).await, "active");

    for (path, status, code) in [
        ("/ui/keys/key_0000000000000000000000", 404, "not_found"),
        ("/ui/keys/%3Cscript%3E", 404, "not_found"),
        ("/ui/nowhere", 404, "not_found"),
        ("/ui?prefix=a%00b", 400, "invalid_request"),
    ] {
        let page = browser.get(path).await;
        assert_eq!((page.status, page.error_code()), (status, code), "{path}");
        assert!(
            page.body
                .contains(&format!(r#"<code id="code">{code}</code>"#)),
            "{path}"
        );
    }
    let slash = browser.get("/ui/").await;
    assert_eq!((slash.status, slash.location()), (303, "/ui"));
    let delete = browser
        .http
        .delete(format!("{}/ui/login", browser.base))
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 405);
    server.shutdown().await;
}

#[tokio::test]
async fn the_origin_check_trusts_the_browsers_fetch_metadata_and_every_session_cookie_is_tried() {
    let server = start().await;
    let key = stripe_key(&server, "run-9/charge", 5.0).await;
    let mut browser = Browser::new(&server);
    let csrf = browser.sign_in().await;
    let fields = [("csrf", csrf.as_str()), ("key", id(&key))];

    // Behind a TLS proxy that rewrites `Host`, `Origin` names the public host: the browser's own
    // `Sec-Fetch-Site: same-origin` is what tells that the form is the dashboard's.
    let proxied = [("host", "127.0.0.1:9"), ("sec-fetch-site", "same-origin")];
    let public = Some("https://vault.example");
    let without_metadata = browser
        .post("/ui/revoke", &fields, public, &proxied[..1])
        .await;
    assert_eq!(
        (without_metadata.status, without_metadata.error_code()),
        (403, "cross_origin")
    );
    for site in ["cross-site", "same-site", "none"] {
        let page = browser
            .post("/ui/revoke", &fields, public, &[("sec-fetch-site", site)])
            .await;
        assert_eq!(
            (page.status, page.error_code()),
            (403, "cross_origin"),
            "{site}"
        );
    }
    assert_eq!(status_of(&server, &key).await, "active");

    // A cookie of the same name set first by a sibling site does not hide the session's.
    let own = browser.cookie.clone().unwrap();
    browser.cookie = Some(format!("vault_key_ui=tossed; {own}"));
    assert_eq!(browser.get("/ui/live").await.status, 200);
    let page = browser.post("/ui/revoke", &fields, public, &proxied).await;
    assert_eq!(page.status, 303, "{}", page.body);
    assert_eq!(status_of(&server, &key).await, "revoked");
    server.shutdown().await;
}

#[tokio::test]
async fn a_minted_keys_page_stops_its_whole_run_used_keys_and_unused() {
    use vault_key_wire::RunCaveats;
    let server = start().await;
    let (_, credential) = stripe_grant(&server, 20.0, 500.0).await;
    let now = time::OffsetDateTime::now_utc();
    let run = |name: &str| RunCaveats {
        run_id: format!("grt_{}", &vault_key_server::token::generate_key_id()[4..]),
        label_prefix: format!("run-7/{name}/"),
        daily_cap_micros: 30_000_000,
        expires_at: (now + time::Duration::minutes(30)).unix_timestamp(),
    };
    let (runaway, other) = (run("runaway"), run("other"));
    let key_of = |run: &RunCaveats| {
        let mut caveats = caveats_within(&credential, now);
        caveats.label = format!("{}charge", run.label_prefix);
        (
            caveats.key_id.clone(),
            credential.open_run(run).mint(&caveats),
        )
    };
    let (used_id, used) = key_of(&runaway);
    let (_, unused) = key_of(&runaway);
    let (_, elsewhere) = key_of(&other);
    assert_eq!(charge(&server, &used, 100).await.0, 200);
    assert_eq!(charge(&server, &elsewhere, 100).await.0, 200);

    let mut browser = Browser::new(&server);
    let csrf = browser.sign_in().await;
    let page = browser.get(&format!("/ui/keys/{used_id}")).await.body;
    assert!(
        page.contains(&format!(r#"<code id="grant">{}</code>"#, runaway.run_id)),
        "{page}"
    );
    let stop = [
        ("grant", runaway.run_id.as_str()),
        ("back", "key"),
        ("key_page", used_id.as_str()),
    ];
    let page = browser.revoke(&csrf, &stop).await;
    assert_eq!(
        (page.status, page.location()),
        (303, format!("/ui/keys/{used_id}").as_str())
    );
    let landed = browser.get(page.location()).await.body;
    assert!(
        landed.contains(&format!(
            "Revoked {} and 1 key minted from it",
            runaway.run_id
        )),
        "{landed}"
    );
    let refused =
        |answer: (u16, Value)| (answer.0, answer.1["code"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        refused(charge(&server, &used, 100).await),
        (401, "key_revoked".to_owned())
    );
    assert_eq!(
        refused(charge(&server, &unused, 100).await),
        (401, "key_revoked".to_owned())
    );
    assert_eq!(
        charge(&server, &elsewhere, 100).await.0,
        200,
        "another run goes on"
    );

    for (grant, status, code) in [
        ("grt_0000000000000000000000", 404, "not_found"),
        ("nope", 400, "invalid_request"),
    ] {
        let page = browser.revoke(&csrf, &[("grant", grant)]).await;
        assert_eq!((page.status, page.error_code()), (status, code), "{grant}");
    }
    server.shutdown().await;
}

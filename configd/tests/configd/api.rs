//! The HTTP surface: bad input gets a clear 4xx and changes nothing, every
//! answer matches docs/openapi/configd.yaml, and the document lists exactly
//! the router's routes.

use crate::support::{
    api, conforms, create, get, http, post, req, server_items, upsert, with_features, ADMIN,
    READER, SCOPED,
};
use reqwest::StatusCode;
use riskfeat_tests::openapi::axum_routes;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_4xx_and_changes_nothing() {
    let (pg, a) = with_features("").await;
    create(&a, "secret-ns").await;
    upsert(&a, "features", "x", json!(1)).await;
    let before = server_items(&a, "features").await;
    let publish_url = a.url("/v1/admin/namespaces/features/publish");
    let raw = |body: &'static str, token: Option<&'static str>| {
        let url = publish_url.clone();
        let url_for_check = url.clone();
        async move {
            let mut r = http()
                .post(url)
                .header("content-type", "application/json")
                .body(body);
            if let Some(t) = token {
                r = r.bearer_auth(t);
            }
            let resp = r.send().await.unwrap();
            let s = resp.status();
            let b = resp.json::<Value>().await.unwrap_or(Value::Null);
            conforms(&reqwest::Method::POST, &url_for_check, s, &b);
            (s, b)
        }
    };
    let big = "x".repeat(2000);
    let ns = |rest: &str| a.url(&format!("/v1/namespaces/{rest}"));
    let cases: Vec<(&str, StatusCode, &str, (StatusCode, Value))> = vec![
        ("invalid JSON", StatusCode::BAD_REQUEST, "body", raw("{\"changes\": [", Some(ADMIN)).await),
        ("unknown field", StatusCode::BAD_REQUEST, "chnages", raw("{\"chnages\": []}", Some(ADMIN)).await),
        ("empty change set", StatusCode::BAD_REQUEST, "changes", raw("{\"changes\": []}", Some(ADMIN)).await),
        (
            "upsert without value",
            StatusCode::BAD_REQUEST,
            "changes[0].value",
            raw("{\"changes\": [{\"op\":\"upsert\",\"key\":\"k\"}]}", Some(ADMIN)).await,
        ),
        (
            "oversized value",
            StatusCode::PAYLOAD_TOO_LARGE,
            "changes[1].value",
            post(publish_url.clone(), ADMIN, json!({"changes": [{"op": "upsert", "key": "ok", "value": 1}, {"op": "upsert", "key": "big", "value": big}]}))
            .await,
        ),
        ("missing token", StatusCode::UNAUTHORIZED, "Authorization", raw("{\"changes\": []}", None).await),
        ("wrong token", StatusCode::UNAUTHORIZED, "Authorization", raw("{\"changes\": []}", Some("not-a-token-at-all")).await),
        (
            "read token publishing",
            StatusCode::FORBIDDEN,
            "Authorization",
            raw("{\"changes\": [{\"op\":\"delete\",\"key\":\"x\"}]}", Some(READER)).await,
        ),
        ("unknown namespace", StatusCode::NOT_FOUND, "namespace", get(ns("nope/changes?from=0"), READER).await),
        ("unknown namespace watch", StatusCode::NOT_FOUND, "version", get(ns("nope/watch?version=0&timeout_s=1"), READER).await),
        ("version from the future", StatusCode::BAD_REQUEST, "version", get(ns("features/watch?version=99&timeout_s=1"), READER).await),
        ("changes from the future", StatusCode::BAD_REQUEST, "from", get(ns("features/changes?from=99"), READER).await),
        ("bad version number", StatusCode::BAD_REQUEST, "version", get(ns("features/watch?version=-1"), READER).await),
        ("token for another namespace", StatusCode::FORBIDDEN, "namespace", get(ns("secret-ns/changes?from=0"), SCOPED).await),
        (
            "multi-watch with a namespace out of scope",
            StatusCode::FORBIDDEN,
            "namespaces.secret-ns",
            post(a.url("/v1/watch"), SCOPED, json!({"namespaces": {"features": 0, "secret-ns": 0}})).await,
        ),
        (
            "invalid namespace name",
            StatusCode::BAD_REQUEST,
            "namespace",
            req(reqwest::Method::PUT, a.url("/v1/admin/namespaces/..bad"), Some(ADMIN), None).await,
        ),
        (
            "duplicate key",
            StatusCode::BAD_REQUEST,
            "changes[1].key",
            raw(
                "{\"changes\": [{\"op\":\"delete\",\"key\":\"x\"},{\"op\":\"upsert\",\"key\":\"x\",\"value\":2}]}",
                Some(ADMIN),
            )
            .await,
        ),
    ];
    for (what, status, field, (got, body)) in cases {
        assert_eq!(got, status, "{what}: {body}");
        assert_eq!(body["error"]["field"], field, "{what}: {body}");
        assert!(
            !body["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{what}: {body}"
        );
    }
    // The scoped token may read its own namespace.
    let (s, _) = get(a.url("/v1/namespaces/features/changes?from=0"), SCOPED).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        server_items(&a, "features").await,
        before,
        "nothing changed"
    );
    let db = pg.primary.connect_superuser().await.unwrap();
    let n: i64 = db
        .query_one("SELECT count(*) FROM configd_changes", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "no change was logged by a rejected request");

    // The rest of the surface, each answer checked against the document by
    // `req`: an unknown route, the operations endpoints, history, a delete.
    let (s, b) = get(a.url("/v1/nope"), READER).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("no_such_route"))
    );
    let (s, _) = req(reqwest::Method::GET, a.url("/healthz"), None, None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, b) = req(reqwest::Method::GET, a.url("/readyz"), None, None).await;
    assert_eq!((s, b["status"].as_str()), (StatusCode::OK, Some("ready")));
    let history = a.url("/v1/admin/namespaces/features/history?limit=5");
    let (s, b) = get(history, ADMIN).await;
    assert_eq!(
        (s, b["history"][0]["version"].as_u64()),
        (StatusCode::OK, Some(1))
    );
    // The namespace list says who the token is and shows only its scope.
    let names = |b: &Value| -> Vec<String> {
        let list = b["namespaces"].as_array().cloned().unwrap_or_default();
        list.iter()
            .map(|n| n["namespace"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let (s, b) = get(a.url("/v1/admin/namespaces"), ADMIN).await;
    assert_eq!(
        (s, &b["token"]["role"]),
        (StatusCode::OK, &json!("admin")),
        "{b}"
    );
    assert_eq!(names(&b), ["features", "secret-ns"], "{b}");
    assert_eq!(b["namespaces"][0]["version"], 1, "{b}");
    let (s, b) = get(a.url("/v1/admin/namespaces"), SCOPED).await;
    assert_eq!(
        (s, &b["token"]),
        (StatusCode::OK, &json!({"name": "scoped", "role": "read"}))
    );
    assert_eq!(names(&b), ["features"], "{b}");
    // The reads under /v1/admin take a read token, within its scope.
    let (s, _) = get(a.url("/v1/admin/namespaces/features/items"), SCOPED).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = get(a.url("/v1/admin/namespaces/secret-ns/history"), SCOPED).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    let secret_ns = a.url("/v1/admin/namespaces/secret-ns");
    let (s, b) = req(
        reqwest::Method::DELETE,
        secret_ns.clone(),
        Some(ADMIN),
        None,
    )
    .await;
    assert_eq!((s, b["deleted"].as_bool()), (StatusCode::OK, Some(true)));
    let (s, b) = req(reqwest::Method::DELETE, secret_ns, Some(ADMIN), None).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("namespace_not_found"))
    );
}

/// docs/openapi/configd.yaml is a valid OpenAPI 3.1 document and lists
/// exactly the routes of configd's router.
#[test]
fn the_openapi_document_is_valid_and_lists_exactly_the_routes() {
    api().validate_document().unwrap();
    // configd's router merges the shared `/metrics` router.
    let root = riskfeat_tests::process::workspace_root();
    let mut routes =
        axum_routes(&std::fs::read_to_string(root.join("configd/src/http/mod.rs")).unwrap());
    routes.extend(axum_routes(
        &std::fs::read_to_string(root.join("shared/src/metrics.rs")).unwrap(),
    ));
    assert!(
        routes.len() >= 12,
        "routes read from the router: {routes:?}"
    );
    assert_eq!(api().operations(), routes, "document vs router");
}

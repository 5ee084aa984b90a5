//! The admin HTTP API of a running `keel serve`: what it says about the cluster, topics and
//! partitions matches what a Kafka client (librdkafka) did; every path its OpenAPI document
//! lists is served; with the authorizer on, it answers only known users allowed to
//! describe the cluster.

mod common;

use std::time::Duration;

use common::Keel;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reports_what_a_client_did_and_serves_its_openapi_paths() {
    let dir = tempfile::tempdir().unwrap();
    let keel = Keel::start(dir.path(), &[]);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &keel.kafka)
        .create()
        .unwrap();
    let res = admin
        .create_topics(
            &[NewTopic::new("orders", 3, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    assert!(res.iter().all(|r| r.is_ok()), "{res:?}");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &keel.kafka)
        .create()
        .unwrap();
    for i in 0..5 {
        producer
            .send(
                FutureRecord::<(), _>::to("orders")
                    .partition(1)
                    .payload(&format!("o-{i}")),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .unwrap();
    }

    let (status, body) = keel.http_get("/api/v1/cluster");
    assert_eq!(status, 200, "{body}");
    let c = json(&body);
    assert_eq!(c["nodes"].as_array().map(|n| n.len()), Some(1), "{c}");
    assert_eq!(c["nodes"][0]["alive"], true, "{c}");
    // A single node started without --node-id is node 0, and leads the controller.
    assert_eq!(c["controller"], c["node_id"], "{c}");
    assert_eq!(c["nodes"][0]["id"], c["node_id"], "{c}");
    assert_eq!(c["leaderless_partitions"], 0, "{c}");

    let (status, body) = keel.http_get("/api/v1/topics");
    assert_eq!(status, 200, "{body}");
    let topics = json(&body);
    let orders = topics["topics"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "orders"))
        .unwrap_or_else(|| panic!("orders missing: {topics}"));
    assert_eq!(orders["partitions"], 3, "{orders}");
    assert_eq!(orders["replication_factor"], 1, "{orders}");
    assert!(orders["local_size_bytes"].as_u64() > Some(0), "{orders}");

    let (status, body) = keel.http_get("/api/v1/topics/orders");
    assert_eq!(status, 200, "{body}");
    let t = json(&body);
    let parts = t["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 3, "{t}");
    assert_eq!(parts[1]["high_watermark"], 5, "{t}");
    assert_eq!(parts[0]["high_watermark"], 0, "{t}");
    assert_eq!(parts[1]["leader"], c["node_id"], "{t}");
    assert_eq!(keel.http_get("/api/v1/topics/nothing-here").0, 404);
    let (status, body) = keel.http_get("/api/v1/moves");
    assert_eq!(
        (status, json(&body)["moves"].as_array().map(|m| m.len())),
        (200, Some(0))
    );

    // Every path the OpenAPI document lists answers with a status it documents.
    let (status, body) = keel.http_get("/api/v1/openapi.json");
    assert_eq!(status, 200);
    let doc = json(&body);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 5, "{doc}");
    for (path, item) in paths {
        let concrete = path.replace("{name}", "orders");
        let (status, body) = keel.http_get(&concrete);
        let documented = item["get"]["responses"]
            .as_object()
            .is_some_and(|r| r.contains_key(&status.to_string()));
        assert!(documented, "GET {concrete} answered {status}, not documented: {body}");
        assert_eq!(status, 200, "GET {concrete}: {body}");
    }
    // The console is one page that reads only API paths the document lists.
    let (status, page) = keel.http_get("/console");
    assert_eq!(status, 200);
    assert!(page.contains("<title>Keel console</title>"), "{page}");
    let mut used = 0;
    for call in page.split("api(\"").skip(1) {
        let path = call.split('"').next().unwrap_or_default();
        let listed = paths
            .keys()
            .any(|p| p.trim_start_matches("/api/v1/").split('/').next() == path.split('/').next());
        assert!(
            listed,
            "the console calls {path}, which the OpenAPI document does not list"
        );
        used += 1;
    }
    assert!(used >= 4, "the console calls {used} API paths");
}

#[test]
fn with_the_authorizer_on_the_admin_api_answers_only_users_allowed_to_describe_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("keel.toml");
    std::fs::write(
        &config,
        "authorizer = true\nsuper_users = [\"User:admin\"]\n\n[sasl_plain_users]\nadmin = \"admin-secret\"\nbob = \"bob-secret\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let keel = Keel::start(&data, &["--config", config.to_str().unwrap()]);

    let (status, body) = keel.http_get("/api/v1/cluster");
    assert_eq!(status, 401, "no credentials: {body}");
    let (status, body) = keel.http_get_as("/api/v1/cluster", "admin", "wrong");
    assert_eq!(status, 401, "a wrong password: {body}");
    let (status, body) = keel.http_get_as("/api/v1/cluster", "nobody", "admin-secret");
    assert_eq!(status, 401, "an unknown user: {body}");
    let (status, body) = keel.http_get_as("/api/v1/topics", "bob", "bob-secret");
    assert_eq!(status, 403, "a user without an ACL: {body}");
    let (status, body) = keel.http_get_as("/api/v1/cluster", "admin", "admin-secret");
    assert_eq!(status, 200, "the super user: {body}");
    assert_eq!(json(&body)["nodes"][0]["alive"], true, "{body}");
    // Health and metrics stay open to probes and scrapers.
    assert_eq!(keel.http_get("/health/live").0, 200);
    assert_eq!(keel.http_get("/metrics").0, 200);
    let (_, scrape) = keel.http_get("/metrics");
    let failures = scrape
        .lines()
        .find_map(|l| l.strip_prefix("keel_sasl_authentication_failures_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(failures >= Some(2.0), "failed logins not counted: {failures:?}");
}

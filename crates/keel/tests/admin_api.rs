//! The admin HTTP API of a running `keel serve`: what it says about the cluster, topics and
//! partitions matches what a Kafka client (librdkafka) did; every path its OpenAPI document
//! lists is served; with the authorizer on, it answers only known users allowed to
//! describe the cluster; every node of a cluster shows any partition's records.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{start_cluster, Keel};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reports_what_a_client_did_and_serves_its_openapi_paths() {
    let dir = tempfile::tempdir().unwrap();
    // A directory of chaos runs as `keel chaos run` leaves them: one run with a verdict and
    // a report, and a directory that is no run.
    let chaos = tempfile::tempdir().unwrap();
    let run = chaos.path().join("run-1");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("verdict.json"),
        r#"{"seed": 1, "nodes": 3, "duration_s": 60, "faults": ["kill"],
            "verdict": {"valid": true, "acknowledged": 1234, "anomalies": [], "longest_unavailable_ms": 900}}"#,
    )
    .unwrap();
    std::fs::write(run.join("report.html"), "<html><body>chaos run 1</body></html>").unwrap();
    std::fs::create_dir_all(chaos.path().join("not-a-run")).unwrap();
    let keel = Keel::start(dir.path(), &["--chaos-reports", chaos.path().to_str().unwrap()]);
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
    for (path, item) in paths.iter().filter(|(_, item)| item.get("get").is_some()) {
        let concrete = path
            .replace("{name}", "orders")
            .replace("{partition}", "1")
            .replace("{run}", "run-1");
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

    // Chaos runs: the one run listed with its verdict; its report served; nothing else.
    let (_, body) = keel.http_get("/api/v1/chaos");
    let listed = json(&body);
    let runs = listed["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{listed}");
    assert_eq!(
        (
            &runs[0]["name"],
            &runs[0]["valid"],
            &runs[0]["acknowledged"],
            &runs[0]["anomalies"]
        ),
        (&json!("run-1"), &json!(true), &json!(1234), &json!(0)),
        "{listed}"
    );
    let (status, page) = keel.http_get("/api/v1/chaos/run-1/report");
    assert_eq!((status, page.contains("chaos run 1")), (200, true), "{page}");
    assert_eq!(keel.http_get("/api/v1/chaos/not-a-run/report").0, 404);
    assert_eq!(keel.http_get("/api/v1/chaos/..%2Frun-1/report").0, 404);

    // Maintenance: set and ended through the API, shown in /cluster; an unknown node is
    // refused.
    let node = c["node_id"].as_i64().expect("node id");
    let (status, body) = keel.http_request("PUT", &format!("/api/v1/nodes/{node}/maintenance"));
    assert_eq!(status, 200, "{body}");
    let (_, body) = keel.http_get("/api/v1/cluster");
    assert_eq!(json(&body)["nodes"][0]["maintenance"], true, "{body}");
    let (status, body) = keel.http_request("DELETE", &format!("/api/v1/nodes/{node}/maintenance"));
    assert_eq!(status, 200, "{body}");
    let (_, body) = keel.http_get("/api/v1/cluster");
    assert_eq!(json(&body)["nodes"][0]["maintenance"], false, "{body}");
    assert_eq!(keel.http_request("PUT", "/api/v1/nodes/77/maintenance").0, 404);
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

/// The message browser's API on three nodes: three partitions with one replica each, on
/// three different nodes. Every node shows every partition's records (a node that does
/// not host one asks its leader) with the keys, values, headers and timestamps the
/// producer sent; offset, timestamp and limit pick the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_shows_any_partition_s_records_as_the_producer_sent_them() {
    let root = tempfile::tempdir().unwrap();
    let nodes = start_cluster(root.path(), 3, &[]);
    let bs: String = nodes.iter().map(|k| k.kafka.clone()).collect::<Vec<_>>().join(",");
    common::create_topic(&bs, "browse", 3, 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bs)
        .set("acks", "all")
        .create()
        .unwrap();
    let base_ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 60_000;
    for p in 0..3 {
        for i in 0..3i64 {
            let headers = rdkafka::message::OwnedHeaders::new().insert(rdkafka::message::Header {
                key: "h",
                value: Some(&format!("x{i}")),
            });
            producer
                .send(
                    FutureRecord::to("browse")
                        .partition(p)
                        .key(&format!("k{p}-{i}"))
                        .payload(&format!("v{p}-{i}"))
                        .timestamp(base_ts + i * 1000)
                        .headers(headers),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    }
    let text = |v: &Value| -> String {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap_or_else(|| panic!("not base64 text: {v}")))
            .expect("base64");
        String::from_utf8(raw).expect("utf-8")
    };
    let mut forwarded = 0;
    for (n, k) in nodes.iter().enumerate() {
        for p in 0..3 {
            let (status, body) = k.http_get(&format!("/api/v1/topics/browse/partitions/{p}/records?offset=0"));
            assert_eq!(status, 200, "node {} partition {p}: {body}", n + 1);
            let page = json(&body);
            let records = page["records"].as_array().expect("records");
            assert_eq!(records.len(), 3, "node {} partition {p}: {page}", n + 1);
            for (i, r) in records.iter().enumerate() {
                assert_eq!(r["offset"], i as i64, "{page}");
                assert_eq!(r["timestamp"], base_ts + i as i64 * 1000, "{page}");
                assert_eq!(text(&r["key"]), format!("k{p}-{i}"), "{page}");
                assert_eq!(text(&r["value"]), format!("v{p}-{i}"), "{page}");
                assert_eq!(r["headers"][0]["key"], "h", "{page}");
                assert_eq!(text(&r["headers"][0]["value"]), format!("x{i}"), "{page}");
            }
            assert_eq!(page["high_watermark"], 3, "{page}");
            if page["node"] != n as i64 + 1 {
                forwarded += 1;
            }
        }
    }
    // Each partition lives on one node: two of every three reads were the leader's answer
    // passed on.
    assert_eq!(forwarded, 6, "reads answered by another node than the one asked");

    let k = &nodes[0];
    let (_, body) = k.http_get("/api/v1/topics/browse/partitions/2/records?offset=1&limit=1");
    let page = json(&body);
    assert_eq!(page["records"].as_array().map(|r| r.len()), Some(1), "{page}");
    assert_eq!(page["records"][0]["offset"], 1, "{page}");
    let (_, body) = k.http_get(&format!(
        "/api/v1/topics/browse/partitions/1/records?timestamp={}",
        base_ts + 1500
    ));
    let page = json(&body);
    assert_eq!(page["from"], 2, "the first record at or after the time: {page}");
    assert_eq!(page["records"][0]["offset"], 2, "{page}");
    let (_, body) = k.http_get("/api/v1/topics/browse/partitions/0/records?limit=2");
    let page = json(&body);
    let offsets: Vec<i64> = page["records"]
        .as_array()
        .map(|r| r.iter().filter_map(|r| r["offset"].as_i64()).collect())
        .unwrap_or_default();
    assert_eq!(offsets, vec![1, 2], "no offset given: the last records: {page}");
    assert_eq!(k.http_get("/api/v1/topics/browse/partitions/7/records").0, 404);
    assert_eq!(k.http_get("/api/v1/topics/none/partitions/0/records").0, 404);
}

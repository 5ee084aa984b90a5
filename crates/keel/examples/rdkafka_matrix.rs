//! The client matrix's scenarios (`compat/clients/SCENARIOS.md`) with the `rdkafka` crate
//! (librdkafka), run by `compat/clients/rust/run.sh` against `$BOOTSTRAP`. Prints one
//! `RESULT scenario PASS|FAIL detail` line per scenario. `$CLIENT_PROPS`, `name=value`
//! lines, are set on every client (compat/security runs it over TLS and SASL/SCRAM that
//! way, built with the `tls-clients` feature).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

const BASE_TS: i64 = 1_700_000_000_000;
const T: Duration = Duration::from_secs(30);

type Res = Result<(), String>;

struct Matrix {
    boot: String,
    props: Vec<(String, String)>,
    prefix: String,
    admin: AdminClient<DefaultClientContext>,
}

fn check(cond: bool, what: impl Into<String>) -> Res {
    if cond {
        Ok(())
    } else {
        Err(what.into())
    }
}

fn e<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |err| format!("{what}: {err}")
}

fn names(tag: &str, n: usize) -> BTreeSet<String> {
    (0..n).map(|i| format!("{tag}{i}")).collect()
}

fn value(m: &impl Message) -> String {
    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned()
}

impl Matrix {
    fn config(&self) -> ClientConfig {
        client_config(&self.boot, &self.props)
    }

    fn consumer(&self, group: &str) -> Result<BaseConsumer, String> {
        self.config()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "10000")
            .create()
            .map_err(e("consumer"))
    }

    fn producer(&self, codec: &str) -> Result<FutureProducer, String> {
        self.config()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("compression.type", codec)
            .create()
            .map_err(e("producer"))
    }

    fn partitions(&self, topic: &str) -> Vec<i32> {
        let Ok(c) = self.consumer(&format!("{}-meta", self.prefix)) else {
            return vec![];
        };
        let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(10)) else {
            return vec![];
        };
        md.topics()
            .iter()
            .filter(|t| t.name() == topic && t.error().is_none())
            .flat_map(|t| t.partitions().iter().map(|p| p.leader()))
            .collect()
    }

    fn listed(&self, topic: &str) -> Result<bool, String> {
        let c = self.consumer(&format!("{}-meta", self.prefix))?;
        let md = c.fetch_metadata(None, Duration::from_secs(10)).map_err(e("metadata"))?;
        Ok(md.topics().iter().any(|t| t.name() == topic))
    }

    async fn create(&self, topic: &str, n: i32) -> Res {
        let r = self
            .admin
            .create_topics(
                &[NewTopic::new(topic, n, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .map_err(e("create topics"))?;
        for t in r {
            t.map_err(|(t, err)| format!("create {t}: {err}"))?;
        }
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            let leaders = self.partitions(topic);
            if leaders.len() == n as usize && leaders.iter().all(|l| *l >= 0) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("{topic} never had leaders"))
    }

    async fn send(&self, p: &FutureProducer, rec: FutureRecord<'_, str, str>) -> Res {
        p.send(rec, T)
            .await
            .map(|_| ())
            .map_err(|(err, _)| format!("send: {err}"))
    }

    fn read(
        &self,
        topic: &str,
        from: &[(i32, i64)],
        count: usize,
    ) -> Result<Vec<rdkafka::message::OwnedMessage>, String> {
        let c = self.consumer(&format!("{}-reader", self.prefix))?;
        let mut tpl = TopicPartitionList::new();
        for (p, o) in from {
            tpl.add_partition_offset(topic, *p, Offset::Offset(*o))
                .map_err(e("assign"))?;
        }
        c.assign(&tpl).map_err(e("assign"))?;
        let mut out = Vec::new();
        let deadline = Instant::now() + T;
        while out.len() < count && Instant::now() < deadline {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                out.push(m.detach());
            }
        }
        Ok(out)
    }

    async fn admin(&self) -> Res {
        let topic = format!("{}-admin", self.prefix);
        self.create(&topic, 3).await?;
        check(self.partitions(&topic).len() == 3, "3 partitions")?;
        let opts = AdminOptions::new();
        for r in self
            .admin
            .alter_configs(
                &[AlterConfig::new(ResourceSpecifier::Topic(&topic)).set("retention.ms", "3600000")],
                &opts,
            )
            .await
            .map_err(e("alter configs"))?
        {
            r.map_err(|(_, err)| format!("alter config: {err}"))?;
        }
        // A changed config reaches every broker soon after it is committed, not at once.
        let deadline = Instant::now() + Duration::from_secs(15);
        let v = loop {
            let d = self
                .admin
                .describe_configs(&[ResourceSpecifier::Topic(&topic)], &opts)
                .await
                .map_err(e("describe configs"))?;
            let res = d
                .into_iter()
                .next()
                .ok_or("no config resource")?
                .map_err(e("describe config"))?;
            let v = res.get("retention.ms").and_then(|c| c.value.clone());
            if v.as_deref() == Some("3600000") || Instant::now() > deadline {
                break v;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        check(v.as_deref() == Some("3600000"), format!("retention.ms = {v:?}"))?;
        check(self.listed(&topic)?, "not listed")?;
        for r in self
            .admin
            .delete_topics(&[&topic], &opts)
            .await
            .map_err(e("delete topics"))?
        {
            r.map_err(|(t, err)| format!("delete {t}: {err}"))?;
        }
        let deadline = Instant::now() + T;
        while self.listed(&topic)? {
            check(Instant::now() < deadline, "still listed after delete")?;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    async fn produce(&self) -> Res {
        let topic = format!("{}-produce", self.prefix);
        self.create(&topic, 3).await?;
        let p = self.producer("none")?;
        for i in 0..30i64 {
            let key = format!("key-{}", i % 5);
            let val = format!("value-{i}");
            let h1 = format!("a{i}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "h1",
                    value: Some(h1.as_str()),
                })
                .insert(Header {
                    key: "h2",
                    value: Some("b"),
                });
            self.send(
                &p,
                FutureRecord::to(&topic)
                    .key(key.as_str())
                    .payload(val.as_str())
                    .headers(headers)
                    .timestamp(BASE_TS + i),
            )
            .await?;
        }
        let got = self.read(&topic, &[(0, 0), (1, 0), (2, 0)], 30)?;
        check(got.len() == 30, format!("read {} of 30", got.len()))?;
        let mut key_part = HashMap::new();
        let mut last = HashMap::new();
        for m in &got {
            let v = value(m);
            let i: i64 = v.trim_start_matches("value-").parse().map_err(e("value"))?;
            let k = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            check(k == format!("key-{}", i % 5), format!("key of {i}"))?;
            let hs: Vec<(String, String)> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_string(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            check(
                hs == vec![("h1".to_string(), format!("a{i}")), ("h2".to_string(), "b".to_string())],
                format!("headers of {i}: {hs:?}"),
            )?;
            check(
                m.timestamp().to_millis() == Some(BASE_TS + i),
                format!("timestamp of {i}"),
            )?;
            check(
                *key_part.entry(k.clone()).or_insert(m.partition()) == m.partition(),
                "key in two partitions",
            )?;
            check(*last.get(&k).unwrap_or(&-1) < i, "key out of order")?;
            last.insert(k, i);
        }
        Ok(())
    }

    async fn compression(&self) -> Res {
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            let topic = format!("{}-codec-{codec}", self.prefix);
            self.create(&topic, 1).await?;
            let p = self.producer(codec)?;
            let values: Vec<String> = (0..10).map(|i| format!("{codec}-{i}-").repeat(20)).collect();
            for v in &values {
                self.send(&p, FutureRecord::<str, str>::to(&topic).payload(v).partition(0))
                    .await?;
            }
            let got: Vec<String> = self.read(&topic, &[(0, 0)], 10)?.iter().map(value).collect();
            check(
                got == values,
                format!("{codec}: read back {} records, not the 10 sent", got.len()),
            )?;
        }
        Ok(())
    }

    async fn offsets(&self) -> Res {
        let topic = format!("{}-offsets", self.prefix);
        self.create(&topic, 1).await?;
        let p = self.producer("none")?;
        for i in 0..20i64 {
            let v = format!("r{i}");
            self.send(
                &p,
                FutureRecord::<str, str>::to(&topic)
                    .payload(&v)
                    .partition(0)
                    .timestamp(BASE_TS + 1000 * i),
            )
            .await?;
        }
        let c = self.consumer(&format!("{}-offsets", self.prefix))?;
        let (lo, hi) = c.fetch_watermarks(&topic, 0, T).map_err(e("watermarks"))?;
        check((lo, hi) == (0, 20), format!("earliest/latest {lo}/{hi}"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(BASE_TS + 7000))
            .map_err(e("tpl"))?;
        let found = c.offsets_for_times(tpl, T).map_err(e("offsets for times"))?;
        let o = found.elements().first().map(|x| x.offset());
        check(o == Some(Offset::Offset(7)), format!("offset for timestamp = {o:?}"))?;
        let offs: Vec<i64> = self.read(&topic, &[(0, 12)], 8)?.iter().map(|m| m.offset()).collect();
        check(offs == (12..20).collect::<Vec<_>>(), format!("from 12: {offs:?}"))
    }

    async fn send_tagged(&self, p: &FutureProducer, topic: &str, tag: &str, n: i32) -> Res {
        for i in 0..n {
            let v = format!("{tag}{i}");
            self.send(p, FutureRecord::<str, str>::to(topic).payload(&v).partition(i % 4))
                .await?;
        }
        Ok(())
    }

    async fn group(&self) -> Res {
        let topic = format!("{}-group", self.prefix);
        let gid = topic.clone();
        self.create(&topic, 4).await?;
        let p = self.producer("none")?;
        let member = || -> Result<BaseConsumer, String> {
            let c = self.consumer(&gid)?;
            c.subscribe(&[&topic]).map_err(e("subscribe"))?;
            Ok(c)
        };
        let owned = |c: &BaseConsumer| c.assignment().map(|a| a.count()).unwrap_or(0);
        let poll = |c: &BaseConsumer, into: &mut Vec<String>| {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                into.push(value(&m));
            }
        };
        let (a, b) = (member()?, member()?);
        let mut early = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !(owned(&a) > 0 && owned(&b) > 0 && owned(&a) + owned(&b) == 4) && Instant::now() < deadline {
            poll(&a, &mut early);
            poll(&b, &mut early);
        }
        check(
            owned(&a) > 0 && owned(&b) > 0,
            format!("assignments {} / {}", owned(&a), owned(&b)),
        )?;
        check(early.is_empty(), "a record before any was produced")?;
        self.send_tagged(&p, &topic, "g", 40).await?;
        let mut seen = Vec::new();
        while seen.len() < 40 && Instant::now() < deadline {
            poll(&a, &mut seen);
            poll(&b, &mut seen);
        }
        check(
            seen.iter().cloned().collect::<BTreeSet<_>>() == names("g", 40),
            format!("two members read {}", seen.len()),
        )?;
        a.commit_consumer_state(CommitMode::Sync).map_err(e("commit"))?;
        b.commit_consumer_state(CommitMode::Sync).map_err(e("commit"))?;
        drop(a);
        let mut stale = Vec::new();
        while owned(&b) < 4 && Instant::now() < deadline {
            poll(&b, &mut stale);
        }
        check(owned(&b) == 4, format!("remaining member has {} partitions", owned(&b)))?;
        check(stale.is_empty(), format!("the remaining member re-read {stale:?}"))?;
        self.send_tagged(&p, &topic, "h", 20).await?;
        let mut more = Vec::new();
        while more.len() < 20 && Instant::now() < deadline {
            poll(&b, &mut more);
        }
        check(
            more.len() == 20 && more.iter().cloned().collect::<BTreeSet<_>>() == names("h", 20),
            format!("after rebalance read {more:?}"),
        )?;
        b.commit_consumer_state(CommitMode::Sync).map_err(e("commit"))?;
        drop(b);
        self.send_tagged(&p, &topic, "j", 10).await?;
        let c = member()?;
        let mut last = Vec::new();
        while last.len() < 10 && Instant::now() < deadline {
            poll(&c, &mut last);
        }
        // A window in which a re-read of older records would show.
        let window = Instant::now() + Duration::from_secs(2);
        while Instant::now() < window {
            poll(&c, &mut last);
        }
        check(
            last.len() == 10 && last.iter().cloned().collect::<BTreeSet<_>>() == names("j", 10),
            format!("resumed member read {last:?}"),
        )?;
        c.commit_consumer_state(CommitMode::Sync).map_err(e("commit"))
    }

    async fn groups_admin(&self) -> Res {
        let gid = format!("{}-group", self.prefix);
        let c = self.consumer(&gid)?;
        let all = c.fetch_group_list(None, T).map_err(e("list groups"))?;
        check(all.groups().iter().any(|g| g.name() == gid), "group not listed")?;
        let one = c.fetch_group_list(Some(&gid), T).map_err(e("describe group"))?;
        let g = one.groups().first().ok_or("group not described")?;
        check(
            g.state() == "Empty" && g.protocol_type() == "consumer",
            format!("state {} protocol type {}", g.state(), g.protocol_type()),
        )?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..4 {
            tpl.add_partition(&gid, p);
        }
        let committed = c.committed_offsets(tpl, T).map_err(e("committed offsets"))?;
        let sum: i64 = committed.elements().iter().filter_map(|x| x.offset().to_raw()).sum();
        check(
            committed.count() == 4 && sum == 70,
            format!("committed offsets sum to {sum}"),
        )
    }
}

fn client_config(boot: &str, props: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", boot);
    for (k, v) in props {
        c.set(k, v);
    }
    c
}

#[tokio::main]
async fn main() {
    let boot = std::env::var("BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let prefix = std::env::var("PREFIX").unwrap_or_else(|_| "rdkafka".into());
    let props: Vec<(String, String)> = std::env::var("CLIENT_PROPS")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let admin: AdminClient<DefaultClientContext> = client_config(&boot, &props).create().expect("admin client");
    let m = Matrix {
        boot,
        props,
        prefix,
        admin,
    };
    let results = [
        ("admin", m.admin().await),
        ("produce", m.produce().await),
        ("compression", m.compression().await),
        ("offsets", m.offsets().await),
        ("group", m.group().await),
        ("groups_admin", m.groups_admin().await),
    ];
    for (name, r) in results {
        match r {
            Ok(()) => println!("RESULT {name} PASS"),
            Err(why) => println!("RESULT {name} FAIL {}", why.replace('\n', " ")),
        }
    }
}

//! Client quotas with Kafka's semantics, as a pure core: quota entities (user, client id,
//! or both; a missing name is the entity type's default), Kafka's precedence between them,
//! and rate metering (bytes, or microseconds of request handling) with Kafka's throttle
//! time.
//!
//! The quotas live in the controller (AlterClientQuotas, DescribeClientQuotas); each node
//! meters what it serves. A client over its `producer_byte_rate` or `consumer_byte_rate` on
//! a node gets `throttle_time_ms` in its response, and the node reads nothing more from that
//! connection until the time has passed (KIP-219), so a client that ignores the field is
//! slowed all the same.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub const USER: &str = "user";
pub const CLIENT_ID: &str = "client-id";
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";
/// Kafka's request quota (KIP-124): the share of one request-handling thread's time a
/// client may use, in percent. Keel meters the time its handlers spend running for the
/// client (their polls on the async workers; not the time they wait for replication, a
/// rebalance or new data, as Kafka leaves purgatory time out).
pub const REQUEST_PERCENTAGE: &str = "request_percentage";

/// The quota keys served.
pub const KEYS: [&str; 3] = [PRODUCER_BYTE_RATE, CONSUMER_BYTE_RATE, REQUEST_PERCENTAGE];

/// Microseconds per second that a `request_percentage` quota of `percent` allows.
pub fn request_micros_per_second(percent: f64) -> f64 {
    percent * 10_000.0
}

/// Rates are measured over at least this long (Kafka: 11 one-second samples).
const WINDOW: Duration = Duration::from_secs(10);
/// Longest throttle asked of a client at once.
const THROTTLE_MAX: Duration = Duration::from_secs(10);

/// A quota entity: the user, the client id, or both; `Some(None)` is the type's default
/// entity, `None` leaves the type out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Entity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Option<String>>,
}

/// A quota value (bytes per second), compared by its bits so that metadata stays `Eq`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Value(pub f64);

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Value {}

/// Every entity's quotas, by key.
pub type Quotas = BTreeMap<Entity, BTreeMap<String, Value>>;

/// The quota `key` that applies to `user` with `client_id`, by Kafka's precedence:
/// user and client id, user and default client, user, default user and client id, default
/// user and default client, default user, client id, default client.
pub fn quota_for(quotas: &Quotas, user: &str, client_id: &str, key: &str) -> Option<f64> {
    let u = |n: Option<&str>| Some(n.map(str::to_string));
    let order = [
        (u(Some(user)), u(Some(client_id))),
        (u(Some(user)), u(None)),
        (u(Some(user)), None),
        (u(None), u(Some(client_id))),
        (u(None), u(None)),
        (u(None), None),
        (None, u(Some(client_id))),
        (None, u(None)),
    ];
    order.into_iter().find_map(|(user, client_id)| {
        quotas
            .get(&Entity { user, client_id })
            .and_then(|q| q.get(key))
            .map(|v| v.0)
    })
}

/// Bytes served per (user, client id, key) on this node, in one-second buckets.
#[derive(Default)]
pub struct Meters {
    meters: Mutex<HashMap<(String, String, &'static str), Meter>>,
}

struct Meter {
    first: Instant,
    /// (second since `first`, bytes).
    buckets: Vec<(u64, u64)>,
}

impl Meters {
    /// Records `bytes` and returns how long the client must wait so that its rate over the
    /// window falls back to `quota` (Kafka's `(rate - quota) / quota * window`), zero when
    /// within it.
    pub fn record(
        &self,
        user: &str,
        client_id: &str,
        key: &'static str,
        bytes: u64,
        quota: f64,
        now: Instant,
    ) -> Duration {
        let mut meters = self.meters.lock().unwrap_or_else(|e| e.into_inner());
        // Meters of clients gone quiet are dropped now and then, so the map stays bounded by
        // the clients seen in the last window.
        if meters.len() > 10_000 {
            meters.retain(|_, m| {
                m.buckets
                    .last()
                    .is_some_and(|(s, _)| m.first + Duration::from_secs(*s) + WINDOW > now)
            });
        }
        let m = meters
            .entry((user.to_string(), client_id.to_string(), key))
            .or_insert_with(|| Meter {
                first: now,
                buckets: Vec::new(),
            });
        let second = now.saturating_duration_since(m.first).as_secs();
        match m.buckets.last_mut() {
            Some((s, b)) if *s == second => *b += bytes,
            _ => m.buckets.push((second, bytes)),
        }
        let oldest = second.saturating_sub(WINDOW.as_secs());
        m.buckets.retain(|(s, _)| *s >= oldest);
        let total: u64 = m.buckets.iter().map(|(_, b)| b).sum();
        let span = now
            .saturating_duration_since(m.first + Duration::from_secs(m.buckets.first().map(|(s, _)| *s).unwrap_or(0)))
            .max(WINDOW);
        let rate = total as f64 / span.as_secs_f64();
        if quota <= 0.0 || rate <= quota {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(((rate - quota) / quota * span.as_secs_f64()).min(THROTTLE_MAX.as_secs_f64()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(user: Option<Option<&str>>, client: Option<Option<&str>>) -> Entity {
        Entity {
            user: user.map(|u| u.map(str::to_string)),
            client_id: client.map(|c| c.map(str::to_string)),
        }
    }

    #[test]
    fn the_most_specific_entity_wins_in_kafkas_order() {
        let mut q = Quotas::new();
        fn set(q: &mut Quotas, entity: Entity, v: f64) {
            q.entry(entity).or_default().insert(PRODUCER_BYTE_RATE.into(), Value(v));
        }
        set(&mut q, e(None, Some(None)), 1.0); // default client
        assert_eq!(quota_for(&q, "alice", "app", PRODUCER_BYTE_RATE), Some(1.0));
        set(&mut q, e(None, Some(Some("app"))), 2.0);
        assert_eq!(quota_for(&q, "alice", "app", PRODUCER_BYTE_RATE), Some(2.0));
        set(&mut q, e(Some(None), None), 3.0); // default user
        assert_eq!(quota_for(&q, "alice", "app", PRODUCER_BYTE_RATE), Some(3.0));
        set(&mut q, e(Some(Some("alice")), None), 4.0);
        assert_eq!(quota_for(&q, "alice", "app", PRODUCER_BYTE_RATE), Some(4.0));
        assert_eq!(quota_for(&q, "bob", "app", PRODUCER_BYTE_RATE), Some(3.0));
        set(&mut q, e(Some(Some("alice")), Some(Some("app"))), 5.0);
        assert_eq!(quota_for(&q, "alice", "app", PRODUCER_BYTE_RATE), Some(5.0));
        assert_eq!(quota_for(&q, "alice", "other", PRODUCER_BYTE_RATE), Some(4.0));
        assert_eq!(quota_for(&q, "alice", "app", CONSUMER_BYTE_RATE), None);
    }

    /// request_percentage is a share of one thread's time: 1 allows 10 ms of handling per
    /// second, and a client that used 150 ms in the 10 s window waits (15 - 10) / 10 of it.
    #[test]
    fn request_percentage_is_a_share_of_one_thread() {
        let m = Meters::default();
        let now = Instant::now();
        let quota = request_micros_per_second(1.0);
        assert_eq!(quota, 10_000.0);
        assert_eq!(
            m.record("u", "c", REQUEST_PERCENTAGE, 100_000, quota, now),
            Duration::ZERO
        );
        let wait = m.record("u", "c", REQUEST_PERCENTAGE, 50_000, quota, now);
        assert_eq!(wait, Duration::from_secs(5));
    }

    #[test]
    fn a_client_over_its_rate_is_throttled_in_proportion() {
        let m = Meters::default();
        let t0 = Instant::now();
        // 100 KB/s allowed over a 10 s window: 500 KB at once is within it.
        assert_eq!(
            m.record("u", "c", PRODUCER_BYTE_RATE, 500_000, 100_000.0, t0),
            Duration::ZERO
        );
        // 1.5 MB in the window: the rate is 150 KB/s over 10 s, so 5 s of silence brings it
        // back to 100 KB/s.
        let wait = m.record("u", "c", PRODUCER_BYTE_RATE, 1_000_000, 100_000.0, t0);
        assert_eq!(wait, Duration::from_secs(5));
        // Other clients are metered apart.
        assert_eq!(m.record("u", "d", PRODUCER_BYTE_RATE, 1, 100_000.0, t0), Duration::ZERO);
        // Once the window has passed, the old bytes no longer count.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(
            m.record("u", "c", PRODUCER_BYTE_RATE, 1000, 100_000.0, later),
            Duration::ZERO
        );
        // The throttle is capped.
        let wait = m.record("u", "c", PRODUCER_BYTE_RATE, 100_000_000, 100_000.0, later);
        assert_eq!(wait, THROTTLE_MAX);
    }
}

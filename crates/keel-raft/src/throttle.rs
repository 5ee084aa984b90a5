//! The move throttle: replication to replicas that are catching up as part of a partition
//! move (see keel-broker's `moves`) shares one byte rate per node, so that copying a
//! partition to a new node does not take the bandwidth and disk its clients' traffic
//! needs (Kafka's `leader.replication.throttled.rate`, Redpanda's learner recovery rate).
//!
//! The partition's leader marks a new replica as throttled while it catches up, and
//! renews the mark while the move goes on; a mark not renewed lapses (a leader that
//! stopped leading, a cancelled move), so a replica that became an ordinary voter is never
//! slowed. Ordinary replication is never throttled.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::NodeId;

/// How long a mark lasts unless renewed.
const MARK_TTL: Duration = Duration::from_secs(5);

/// A token bucket of `rate` bytes per second, holding at most one second of them, shared by
/// every throttled replica this node sends to.
#[derive(Debug)]
pub struct MoveThrottle {
    rate: Mutex<u64>,
    bucket: Mutex<(f64, Instant)>,
    marks: Mutex<HashMap<(String, NodeId), Instant>>,
    /// How many marks there are (lapsed ones included until the next mark): with none,
    /// replication skips the throttle without a lock.
    marked: std::sync::atomic::AtomicUsize,
    waited_ms: std::sync::atomic::AtomicU64,
}

impl Default for MoveThrottle {
    fn default() -> Self {
        MoveThrottle {
            rate: Mutex::new(0),
            bucket: Mutex::new((0.0, Instant::now())),
            marks: Mutex::new(HashMap::new()),
            marked: Default::default(),
            waited_ms: Default::default(),
        }
    }
}

impl MoveThrottle {
    /// Bytes per second for all moves' catch-up together (0: unthrottled).
    pub fn set_rate(&self, bytes_per_s: u64) {
        *self.rate.lock().unwrap_or_else(|e| e.into_inner()) = bytes_per_s;
    }

    /// Throttles replication to `replica` of `group` for a while (renew it to keep it).
    pub fn mark(&self, group: &str, replica: NodeId) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        marks.retain(|_, until| *until > now);
        marks.insert((group.to_string(), replica), now + MARK_TTL);
        self.marked.store(marks.len(), std::sync::atomic::Ordering::Release);
    }

    /// Replication to `replica` of `group` is no longer throttled.
    pub fn unmark(&self, group: &str, replica: NodeId) {
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        marks.remove(&(group.to_string(), replica));
        self.marked.store(marks.len(), std::sync::atomic::Ordering::Release);
    }

    fn is_marked(&self, group: &str, replica: NodeId) -> bool {
        self.marks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(group.to_string(), replica))
            .is_some_and(|until| *until > Instant::now())
    }

    /// Takes `bytes` for sending to `replica` of `group`, or says how long until the
    /// bucket has some. An unmarked replica never waits; a marked one may send whenever the
    /// bucket is not in debt, and its bytes may put it in debt (so a batch larger than a
    /// second's worth still goes, and the senders after it wait the debt off).
    pub fn try_take(&self, group: &str, replica: NodeId, bytes: usize) -> Result<(), Duration> {
        if self.marked.load(std::sync::atomic::Ordering::Acquire) == 0 {
            return Ok(());
        }
        let rate = *self.rate.lock().unwrap_or_else(|e| e.into_inner());
        if rate == 0 || !self.is_marked(group, replica) {
            return Ok(());
        }
        let rate = rate as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = *b;
        let tokens = (tokens + now.duration_since(last).as_secs_f64() * rate).min(rate);
        if tokens < 0.0 {
            *b = (tokens, now);
            return Err(Duration::from_secs_f64(-tokens / rate).max(Duration::from_millis(1)));
        }
        *b = (tokens - bytes as f64, now);
        Ok(())
    }

    /// Counts time a sender spent waiting on the throttle.
    pub fn waited(&self, d: Duration) {
        self.waited_ms
            .fetch_add(d.as_millis() as u64, std::sync::atomic::Ordering::Relaxed);
    }

    /// Milliseconds senders waited on the throttle, in all.
    pub fn waited_ms(&self) -> u64 {
        self.waited_ms.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_marked_replicas_wait_and_the_rate_holds_over_time() {
        let t = MoveThrottle::default();
        t.set_rate(1000);
        assert_eq!(t.try_take("g", 7, 5000), Ok(()), "unmarked: never throttled");
        t.mark("g", 7);
        // The bucket starts empty, not in debt: a first batch goes, and puts it 5000 bytes
        // in debt, which takes 5 s at 1000 B/s to pay off.
        assert_eq!(t.try_take("g", 7, 5000), Ok(()));
        let wait = t.try_take("g", 7, 10).expect_err("in debt");
        assert!((wait.as_secs_f64() - 5.0).abs() < 0.1, "{wait:?}");
        assert_eq!(t.try_take("g", 8, 1000), Ok(()), "another replica is not marked");
        t.unmark("g", 7);
        assert_eq!(t.try_take("g", 7, 1000), Ok(()));
        t.mark("g", 7);
        t.set_rate(0);
        assert_eq!(t.try_take("g", 7, 1 << 30), Ok(()), "rate 0: unthrottled");
    }
}

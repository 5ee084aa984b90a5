//! DescribeLogDirs (KIP-113): this node's one log directory (its data directory), the
//! size of every partition replica in it, and the file system's size and free space, as
//! `kafka-log-dirs --describe` and admin clients' `describeLogDirs` read them.

use std::collections::BTreeMap;
use std::sync::Arc;

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::{DescribeLogDirsRequest, DescribeLogDirsResponse, TopicName};

use super::s;
use crate::Broker;

/// Total and usable bytes of the file system holding `dir` (-1 each when unknown).
/// The file system holding `dir`: (total bytes, bytes available), -1 when unknown.
pub(crate) fn space(dir: &std::path::Path) -> (i64, i64) {
    match rustix::fs::statvfs(dir) {
        Ok(st) => {
            let block = st.f_frsize as i64;
            (
                (st.f_blocks as i64).saturating_mul(block),
                (st.f_bavail as i64).saturating_mul(block),
            )
        }
        Err(_) => (-1, -1),
    }
}

pub async fn handle(
    b: &Arc<Broker>,
    req: DescribeLogDirsRequest,
    _v: i16,
    who: &crate::handlers::sasl::Session,
) -> DescribeLogDirsResponse {
    if !b.authorize_cluster(who, crate::acl::op::DESCRIBE) {
        // v3+ carry the error; older versions answer no directories, as Kafka does.
        let mut r = DescribeLogDirsResponse::default();
        r.error_code = kafka_protocol::ResponseError::ClusterAuthorizationFailed.code();
        return r;
    }
    let wanted: Option<BTreeMap<String, Vec<i32>>> = req
        .topics
        .map(|ts| ts.into_iter().map(|t| (t.topic.0.to_string(), t.partitions)).collect());
    let mut topics: BTreeMap<String, Vec<DescribeLogDirsPartition>> = BTreeMap::new();
    for part in b.topics.all_partitions() {
        if let Some(w) = &wanted {
            if !w.get(&part.topic).is_some_and(|ps| ps.contains(&part.index)) {
                continue;
            }
        }
        let mut p = DescribeLogDirsPartition::default();
        p.partition_index = part.index;
        p.partition_size = part.size_bytes().min(i64::MAX as u64) as i64;
        p.offset_lag = 0;
        topics.entry(part.topic.clone()).or_default().push(p);
    }
    let dir = b.config.data_dir.clone();
    let (total, usable) = tokio::task::spawn_blocking(move || space(&dir))
        .await
        .unwrap_or((-1, -1));
    let mut result = DescribeLogDirsResult::default();
    result.log_dir = s(b.config.data_dir.display().to_string());
    result.total_bytes = total;
    result.usable_bytes = usable;
    result.topics = topics
        .into_iter()
        .map(|(name, mut partitions)| {
            partitions.sort_by_key(|p| p.partition_index);
            let mut t = DescribeLogDirsTopic::default();
            t.name = TopicName(s(name));
            t.partitions = partitions;
            t
        })
        .collect();
    let mut r = DescribeLogDirsResponse::default();
    r.results = vec![result];
    r
}

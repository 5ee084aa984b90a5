//! A consumer-group member speaking the classic group protocol: JoinGroup, SyncGroup,
//! Heartbeat, OffsetCommit within a generation, OffsetFetch and LeaveGroup, each sent to the
//! group's coordinator. The assignor is Kafka's "roundrobin": members sorted by id take the
//! sorted topic-partitions in turn, so a Keel member and a librdkafka or Java member using
//! `roundrobin` agree on who owns what.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::{kafka_err, Client};

/// The assignor's protocol name.
pub const ROUND_ROBIN: &str = "roundrobin";

/// A member's view of the group after JoinGroup and SyncGroup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub member_id: String,
    pub generation: i32,
    pub leader: bool,
    /// The partitions this member owns in this generation, sorted.
    pub assigned: Vec<(String, i32)>,
}

/// Kafka's round-robin assignment: every subscribed (topic, partition), sorted, dealt to the
/// members (sorted by id) that subscribe to its topic, in turn. `members` is (id, topics);
/// `partitions` is each topic's partition count. Returns each member's sorted partitions.
pub fn assign_round_robin(
    members: &[(String, Vec<String>)],
    partitions: &BTreeMap<String, i32>,
) -> BTreeMap<String, Vec<(String, i32)>> {
    let mut ids: Vec<&(String, Vec<String>)> = members.iter().collect();
    ids.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out: BTreeMap<String, Vec<(String, i32)>> = ids.iter().map(|(id, _)| (id.clone(), Vec::new())).collect();
    if ids.is_empty() {
        return out;
    }
    let mut turn = 0usize;
    for (topic, count) in partitions {
        for p in 0..*count {
            // The next member, in turn, that subscribes to this topic.
            for _ in 0..ids.len() {
                let (id, topics) = ids[turn % ids.len()];
                turn += 1;
                if topics.contains(topic) {
                    out.entry(id.clone()).or_default().push((topic.clone(), p));
                    break;
                }
            }
        }
    }
    out
}

fn encode_subscription(topics: &[String]) -> Result<Bytes> {
    let sub = ConsumerProtocolSubscription::default()
        .with_topics(topics.iter().map(|t| StrBytes::from_string(t.clone())).collect());
    let mut b = BytesMut::new();
    b.put_i16(0);
    sub.encode(&mut b, 0)?;
    Ok(b.freeze())
}

fn decode_subscription(bytes: &Bytes) -> Vec<String> {
    let mut b = bytes.clone();
    if b.remaining() < 2 {
        return Vec::new();
    }
    let version = b.get_i16();
    ConsumerProtocolSubscription::decode(&mut b, version.clamp(0, 3))
        .map(|s| s.topics.into_iter().map(|t| t.to_string()).collect())
        .unwrap_or_default()
}

fn encode_assignment(parts: &[(String, i32)]) -> Result<Bytes> {
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in parts {
        by_topic.entry(t.as_str()).or_default().push(*p);
    }
    let a = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                consumer_protocol_assignment::TopicPartition::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(ps)
            })
            .collect(),
    );
    let mut b = BytesMut::new();
    b.put_i16(0);
    a.encode(&mut b, 0)?;
    Ok(b.freeze())
}

/// A member's assignment in the consumer protocol, topic by topic (empty when it does
/// not decode).
pub fn decode_assignment(bytes: &Bytes) -> Vec<(String, Vec<i32>)> {
    let mut b = bytes.clone();
    if b.remaining() < 2 {
        return Vec::new();
    }
    let version = b.get_i16();
    ConsumerProtocolAssignment::decode(&mut b, version.clamp(0, 3))
        .map(|a| {
            a.assigned_partitions
                .into_iter()
                .map(|t| (t.topic.0.to_string(), t.partitions))
                .collect()
        })
        .unwrap_or_default()
}

/// The partitions of an assignment, sorted.
fn assigned_partitions(bytes: &Bytes) -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = decode_assignment(bytes)
        .into_iter()
        .flat_map(|(name, parts)| parts.into_iter().map(move |p| (name.clone(), p)))
        .collect();
    out.sort();
    out
}

fn group_id(group: &str) -> GroupId {
    GroupId(StrBytes::from_string(group.to_string()))
}

impl Client {
    /// Joins `group` subscribed to `topics` (JoinGroup, then SyncGroup; the leader computes
    /// the round-robin assignment from Metadata). `member_id` is empty for a new member.
    /// Returns this member's generation and partitions; a Kafka error code comes back as a
    /// [`crate::KafkaError`].
    pub async fn join_group(
        &mut self,
        group: &str,
        member_id: &str,
        topics: &[String],
        session_timeout_ms: i32,
    ) -> Result<Membership> {
        let addr = self.coordinator_addr(group).await?;
        let metadata = encode_subscription(topics)?;
        let mut member_id = member_id.to_string();
        let joined = {
            let c = self.at(&addr).await?;
            let mut attempt = 0;
            loop {
                let req = JoinGroupRequest::default()
                    .with_group_id(group_id(group))
                    .with_session_timeout_ms(session_timeout_ms)
                    .with_rebalance_timeout_ms(session_timeout_ms)
                    .with_member_id(StrBytes::from_string(member_id.clone()))
                    .with_protocol_type(StrBytes::from_static_str("consumer"))
                    .with_protocols(vec![JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str(ROUND_ROBIN))
                        .with_metadata(metadata.clone())]);
                let resp = c.call_at(&req, 5).await?;
                // MEMBER_ID_REQUIRED: join again with the id the coordinator chose.
                if resp.error_code == 79 && attempt == 0 {
                    member_id = resp.member_id.to_string();
                    attempt += 1;
                    continue;
                }
                if resp.error_code != 0 {
                    return Err(kafka_err(format!("JoinGroup {group}"), resp.error_code, String::new()));
                }
                break resp;
            }
        };
        let member_id = joined.member_id.to_string();
        let leader = joined.leader.as_str() == member_id;
        let mut assignments = Vec::new();
        if leader {
            let members: Vec<(String, Vec<String>)> = joined
                .members
                .iter()
                .map(|m| (m.member_id.to_string(), decode_subscription(&m.metadata)))
                .collect();
            let mut wanted: Vec<&str> = members.iter().flat_map(|(_, t)| t.iter().map(String::as_str)).collect();
            wanted.sort_unstable();
            wanted.dedup();
            let md = self.metadata(Some(&wanted)).await?;
            let counts: BTreeMap<String, i32> = md
                .topics
                .iter()
                .filter(|t| t.error_code == 0)
                .filter_map(|t| Some((t.name.as_ref()?.0.to_string(), t.partitions.len() as i32)))
                .collect();
            for (id, parts) in assign_round_robin(&members, &counts) {
                assignments.push(
                    SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_assignment(encode_assignment(&parts)?),
                );
            }
        }
        let req = SyncGroupRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(joined.generation_id)
            .with_member_id(StrBytes::from_string(member_id.clone()))
            .with_protocol_type(Some(StrBytes::from_static_str("consumer")))
            .with_protocol_name(Some(StrBytes::from_static_str(ROUND_ROBIN)))
            .with_assignments(assignments);
        let resp = self.at(&addr).await?.call_at(&req, 5).await?;
        if resp.error_code != 0 {
            return Err(kafka_err(format!("SyncGroup {group}"), resp.error_code, String::new()));
        }
        Ok(Membership {
            member_id,
            generation: joined.generation_id,
            leader,
            assigned: assigned_partitions(&resp.assignment),
        })
    }

    /// One heartbeat; REBALANCE_IN_PROGRESS, ILLEGAL_GENERATION and UNKNOWN_MEMBER_ID come
    /// back as [`crate::KafkaError`]s telling the member to join again.
    pub async fn heartbeat(&mut self, group: &str, m: &Membership) -> Result<()> {
        let addr = self.coordinator_addr(group).await?;
        let req = HeartbeatRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id(m.generation)
            .with_member_id(StrBytes::from_string(m.member_id.clone()));
        let resp = self.at(&addr).await?.call_at(&req, 3).await?;
        if resp.error_code != 0 {
            return Err(kafka_err(format!("Heartbeat {group}"), resp.error_code, String::new()));
        }
        Ok(())
    }

    /// Commits `offsets` (topic, partition, next offset to read) as member `m` of its
    /// generation: the coordinator refuses it if the generation has moved on.
    pub async fn commit_as_member(
        &mut self,
        group: &str,
        m: &Membership,
        offsets: &[(String, i32, i64)],
    ) -> Result<()> {
        let addr = self.coordinator_addr(group).await?;
        let mut by_topic: BTreeMap<&str, Vec<OffsetCommitRequestPartition>> = BTreeMap::new();
        for (t, p, o) in offsets {
            by_topic.entry(t.as_str()).or_default().push(
                OffsetCommitRequestPartition::default()
                    .with_partition_index(*p)
                    .with_committed_offset(*o),
            );
        }
        let req = OffsetCommitRequest::default()
            .with_group_id(group_id(group))
            .with_generation_id_or_member_epoch(m.generation)
            .with_member_id(StrBytes::from_string(m.member_id.clone()))
            .with_topics(
                by_topic
                    .into_iter()
                    .map(|(t, parts)| {
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.to_string())))
                            .with_partitions(parts)
                    })
                    .collect(),
            );
        let resp = self.at(&addr).await?.call_at(&req, 8).await?;
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(kafka_err(
                        format!("OffsetCommit {group} {}-{}", t.name.0.as_str(), p.partition_index),
                        p.error_code,
                        String::new(),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The committed offset of each of `partitions` of `topic` for `group` (-1 when none).
    pub async fn committed(&mut self, group: &str, topic: &str, partitions: &[i32]) -> Result<Vec<(i32, i64)>> {
        let addr = self.coordinator_addr(group).await?;
        let req = OffsetFetchRequest::default()
            .with_group_id(group_id(group))
            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.to_string())))
                .with_partition_indexes(partitions.to_vec())]));
        let resp = self.at(&addr).await?.call_at(&req, 7).await?;
        if resp.error_code != 0 {
            return Err(kafka_err(
                format!("OffsetFetch {group}"),
                resp.error_code,
                String::new(),
            ));
        }
        let mut out = Vec::new();
        for t in resp.topics {
            for p in t.partitions {
                if p.error_code != 0 {
                    return Err(kafka_err(
                        format!("OffsetFetch {group} {topic}-{}", p.partition_index),
                        p.error_code,
                        String::new(),
                    ));
                }
                out.push((p.partition_index, p.committed_offset));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Leaves `group` (LeaveGroup), so the others rebalance without waiting for a timeout.
    pub async fn leave_group(&mut self, group: &str, member_id: &str) -> Result<()> {
        let addr = self.coordinator_addr(group).await?;
        let req = LeaveGroupRequest::default()
            .with_group_id(group_id(group))
            .with_member_id(StrBytes::from_string(member_id.to_string()));
        let resp = self.at(&addr).await?.call_at(&req, 2).await?;
        if resp.error_code != 0 {
            return Err(anyhow!("LeaveGroup {group}: error code {}", resp.error_code));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(t: &[(&str, i32)]) -> BTreeMap<String, i32> {
        t.iter().map(|(n, c)| (n.to_string(), *c)).collect()
    }

    #[test]
    fn round_robin_deals_sorted_partitions_to_sorted_members() {
        let members = vec![
            ("m-b".to_string(), vec!["t".to_string()]),
            ("m-a".to_string(), vec!["t".to_string()]),
        ];
        let a = assign_round_robin(&members, &counts(&[("t", 5)]));
        assert_eq!(a["m-a"], vec![("t".into(), 0), ("t".into(), 2), ("t".into(), 4)]);
        assert_eq!(a["m-b"], vec![("t".into(), 1), ("t".into(), 3)]);
    }

    #[test]
    fn round_robin_gives_a_topic_only_to_its_subscribers() {
        let members = vec![
            ("a".to_string(), vec!["x".to_string(), "y".to_string()]),
            ("b".to_string(), vec!["y".to_string()]),
        ];
        let a = assign_round_robin(&members, &counts(&[("x", 2), ("y", 2)]));
        assert_eq!(a["a"], vec![("x".into(), 0), ("x".into(), 1), ("y".into(), 1)]);
        assert_eq!(a["b"], vec![("y".into(), 0)]);
    }

    #[test]
    fn assignments_and_subscriptions_round_trip_through_the_consumer_protocol() {
        let parts = vec![("t".to_string(), 0), ("t".to_string(), 3), ("u".to_string(), 1)];
        assert_eq!(assigned_partitions(&encode_assignment(&parts).unwrap()), parts);
        let topics = vec!["t".to_string(), "u".to_string()];
        assert_eq!(decode_subscription(&encode_subscription(&topics).unwrap()), topics);
        assert!(decode_assignment(&Bytes::from_static(&[0])).is_empty());
    }
}

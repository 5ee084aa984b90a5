//! The group state machine, driven without sockets: tokens are plain numbers.

use bytes::Bytes;

use super::state::*;

const TIMING: GroupTiming = GroupTiming {
    initial_rebalance_delay_ms: 100,
};

fn req(member: &str, instance: Option<&str>, protocols: &[&str]) -> JoinRequest {
    JoinRequest {
        member_id: member.to_string(),
        instance_id: instance.map(str::to_string),
        client_id: "c".into(),
        client_host: "/127.0.0.1".into(),
        session_timeout_ms: 1000,
        rebalance_timeout_ms: 5000,
        protocol_type: "consumer".into(),
        protocols: protocols
            .iter()
            .map(|p| (p.to_string(), Bytes::from(format!("meta-{p}"))))
            .collect(),
    }
}

fn joined(replies: &[(u32, Reply)], token: u32) -> JoinResult {
    replies
        .iter()
        .find_map(|(t, r)| match r {
            Reply::Join(j) if *t == token => Some(j.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no join reply for token {token} in {replies:?}"))
}

fn synced(replies: &[(u32, Reply)], token: u32) -> SyncResult {
    replies
        .iter()
        .find_map(|(t, r)| match r {
            Reply::Sync(s) if *t == token => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no sync reply for token {token} in {replies:?}"))
}

/// Forms a stable group of members "a", "b" (from empty ids); returns their member ids.
fn stable_pair(g: &mut Group<u32>) -> (String, String) {
    assert!(
        g.join(0, req("", None, &["range"]), 1).is_empty(),
        "first join waits for the initial delay"
    );
    assert!(g.join(10, req("", None, &["range"]), 2).is_empty());
    let r = g.tick(150);
    let (a, b) = (joined(&r, 1), joined(&r, 2));
    assert_eq!(a.generation, 1);
    let (leader, follower) = if a.leader == a.member_id { (a, b) } else { (b, a) };
    assert_eq!(leader.members.len(), 2, "the leader sees every member's metadata");
    assert!(follower.members.is_empty());
    assert!(
        g.sync(160, &follower.member_id, None, 1, vec![], 3).is_empty(),
        "follower waits for the leader"
    );
    let r = g.sync(
        170,
        &leader.member_id,
        None,
        1,
        vec![
            (leader.member_id.clone(), Bytes::from("A")),
            (follower.member_id.clone(), Bytes::from("B")),
        ],
        4,
    );
    assert_eq!(synced(&r, 3).assignment, Bytes::from("B"));
    assert_eq!(synced(&r, 4).assignment, Bytes::from("A"));
    assert_eq!(g.state, GroupState::Stable);
    (leader.member_id, follower.member_id)
}

/// Join, the leader's assignment, and its delivery to every member.
#[test]
fn members_join_and_receive_assignments() {
    let mut g = Group::new("g", TIMING);
    stable_pair(&mut g);
    assert_eq!(g.generation, 1);
    assert_eq!(g.rebalances, 1);
}

/// Heartbeats report unknown members, stale generations and rebalances.
#[test]
fn heartbeat_errors() {
    let mut g = Group::new("g", TIMING);
    let (leader, follower) = stable_pair(&mut g);
    assert_eq!(g.heartbeat(200, &leader, None, 1), NONE);
    assert_eq!(g.heartbeat(200, "nobody", None, 1), UNKNOWN_MEMBER_ID);
    assert_eq!(g.heartbeat(200, &leader, None, 0), ILLEGAL_GENERATION);
    // A third member joins: the others are told to rejoin.
    assert!(g.join(300, req("", None, &["range"]), 5).is_empty());
    assert_eq!(g.heartbeat(310, &follower, None, 1), REBALANCE_IN_PROGRESS);
    assert!(g.join(320, req(&leader, None, &["range"]), 6).is_empty());
    let r = g.join(330, req(&follower, None, &["range"]), 7);
    assert_eq!(
        joined(&r, 7).generation,
        2,
        "all known members rejoined: the join completes at once"
    );
    assert_eq!(joined(&r, 5).generation, 2);
}

/// A member that stops heartbeating is removed after its session timeout and the others
/// rebalance without it.
#[test]
fn session_expiry_triggers_rebalance() {
    let mut g = Group::new("g", TIMING);
    let (leader, follower) = stable_pair(&mut g);
    assert_eq!(g.heartbeat(900, &leader, None, 1), NONE);
    assert!(g.tick(1000).is_empty(), "nobody expired yet");
    let r = g.tick(1200); // follower's last heartbeat was at 170
    assert!(r.is_empty());
    assert!(!g.members.contains_key(&follower), "expired member still present");
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let r = g.join(1210, req(&leader, None, &["range"]), 8);
    let j = joined(&r, 8);
    assert_eq!((j.generation, j.members.len()), (2, 1));
}

/// A static member restarting within its session timeout gets its old assignment back
/// with no new generation; the other member never sees a rebalance.
#[test]
fn static_member_rejoins_without_rebalance() {
    let mut g = Group::new("g", TIMING);
    assert!(g.join(0, req("", Some("i-1"), &["range"]), 1).is_empty());
    assert!(g.join(0, req("", Some("i-2"), &["range"]), 2).is_empty());
    let r = g.tick(150);
    let (a, b) = (joined(&r, 1), joined(&r, 2));
    let leader = if a.leader == a.member_id { &a } else { &b };
    let follower = if a.leader == a.member_id { &b } else { &a };
    let follower_instance = if follower.member_id == a.member_id {
        "i-1"
    } else {
        "i-2"
    };
    g.sync(160, &follower.member_id, None, 1, vec![], 3);
    g.sync(
        170,
        &leader.member_id,
        None,
        1,
        vec![
            (leader.member_id.clone(), Bytes::from("L")),
            (follower.member_id.clone(), Bytes::from("F")),
        ],
        4,
    );
    // The follower process restarts: a new join with an empty member id and its instance id.
    let r = g.join(500, req("", Some(follower_instance), &["range"]), 9);
    let j = joined(&r, 9);
    assert_eq!(j.error, NONE);
    assert_eq!(j.generation, 1, "a static rejoin must not start a new generation");
    assert_ne!(j.member_id, follower.member_id);
    assert_eq!(g.state, GroupState::Stable);
    let r = g.sync(510, &j.member_id, None, 1, vec![], 10);
    assert_eq!(synced(&r, 10).assignment, Bytes::from("F"));
    assert_eq!(
        g.heartbeat(520, &leader.member_id, None, 1),
        NONE,
        "the leader saw no rebalance"
    );
    assert_eq!(
        g.heartbeat(520, &follower.member_id, None, 1),
        UNKNOWN_MEMBER_ID,
        "the old member id is fenced"
    );
}

/// The protocol every member supports wins; a joiner with none in common is refused.
#[test]
fn protocol_selection() {
    let mut g = Group::new("g", TIMING);
    g.join(0, req("", None, &["range", "roundrobin"]), 1);
    g.join(0, req("", None, &["roundrobin", "range"]), 2);
    g.join(0, req("", None, &["roundrobin"]), 3);
    let r = g.tick(150);
    assert_eq!(joined(&r, 1).protocol_name.as_deref(), Some("roundrobin"));
    let r = g.join(200, req("", None, &["sticky"]), 4);
    assert_eq!(joined(&r, 4).error, INCONSISTENT_GROUP_PROTOCOL);
}

/// LeaveGroup rebalances the rest; the last leave empties the group.
#[test]
fn leave_rebalances_then_empties() {
    let mut g = Group::new("g", TIMING);
    let (leader, follower) = stable_pair(&mut g);
    let (code, _) = g.leave(300, &follower, None);
    assert_eq!(code, NONE);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    let r = g.join(310, req(&leader, None, &["range"]), 5);
    assert_eq!(joined(&r, 5).generation, 2);
    let (code, _) = g.leave(400, &leader, None);
    assert_eq!(code, NONE);
    assert_eq!(g.state, GroupState::Empty);
    assert_eq!(g.leave(410, &leader, None).0, UNKNOWN_MEMBER_ID);
}

/// Offset commits are fenced by member id and generation; outsiders may commit only to an
/// empty group.
#[test]
fn commit_fencing() {
    let mut g: Group<u32> = Group::new("g", TIMING);
    assert_eq!(g.commit_allowed("", None, -1), NONE);
    let (leader, _) = stable_pair(&mut g);
    assert_eq!(g.commit_allowed(&leader, None, 1), NONE);
    assert_eq!(g.commit_allowed(&leader, None, 0), ILLEGAL_GENERATION);
    assert_eq!(g.commit_allowed("stranger", None, 1), UNKNOWN_MEMBER_ID);
    assert_eq!(g.commit_allowed("", None, -1), ILLEGAL_GENERATION);
    // A rebalance starts: members of the current generation may still commit...
    g.join(300, req("", None, &["range"]), 9);
    assert_eq!(g.state, GroupState::PreparingRebalance);
    assert_eq!(g.commit_allowed(&leader, None, 1), NONE);
    // ...but not once the new generation is formed and awaits its assignment.
    let r = g.tick(300 + 5000 + 1);
    let j = joined(&r, 9);
    assert_eq!(g.state, GroupState::CompletingRebalance);
    assert_eq!(
        g.commit_allowed(&j.member_id, None, j.generation),
        REBALANCE_IN_PROGRESS
    );
}

/// Members that do not rejoin within the rebalance timeout are dropped from the new
/// generation.
#[test]
fn slow_rejoiner_is_dropped() {
    let mut g = Group::new("g", TIMING);
    let (leader, follower) = stable_pair(&mut g);
    g.join(300, req(&leader, None, &["range"]), 5); // starts a rebalance; follower must rejoin
    assert_eq!(g.heartbeat(400, &follower, None, 1), REBALANCE_IN_PROGRESS);
    let r = g.tick(300 + 5000 + 1);
    let j = joined(&r, 5);
    assert_eq!(j.members.len(), 1);
    assert!(!g.members.contains_key(&follower));
}

/// A static leader restarting within its session timeout gets the member list back with
/// the current generation; its recomputed assignment is ignored and nobody rebalances.
#[test]
fn static_leader_rejoins_without_rebalance() {
    let mut g = Group::new("g", TIMING);
    g.join(0, req("", Some("i-1"), &["range"]), 1);
    g.join(0, req("", Some("i-2"), &["range"]), 2);
    let r = g.tick(150);
    let a = joined(&r, 1);
    let leader_instance = if a.leader == a.member_id { "i-1" } else { "i-2" };
    let (leader, follower) = if a.leader == a.member_id {
        (a.clone(), joined(&r, 2))
    } else {
        (joined(&r, 2), a.clone())
    };
    g.sync(160, &follower.member_id, None, 1, vec![], 3);
    g.sync(
        170,
        &leader.member_id,
        None,
        1,
        vec![
            (leader.member_id.clone(), Bytes::from("L")),
            (follower.member_id.clone(), Bytes::from("F")),
        ],
        4,
    );
    let r = g.join(500, req("", Some(leader_instance), &["range"]), 5);
    let j = joined(&r, 5);
    assert_eq!((j.error, j.generation), (NONE, 1));
    assert_eq!(j.leader, j.member_id, "the returning member is still the leader");
    assert_eq!(j.members.len(), 2);
    let r = g.sync(
        510,
        &j.member_id,
        None,
        1,
        vec![(follower.member_id.clone(), Bytes::from("changed"))],
        6,
    );
    assert_eq!(synced(&r, 6).assignment, Bytes::from("L"));
    assert_eq!(g.heartbeat(520, &follower.member_id, None, 1), NONE);
    assert_eq!(g.state, GroupState::Stable);
}

/// A second process with the same static instance id replaces the first; the first one's
/// heartbeats, syncs, commits and rejoins are then fenced with FENCED_INSTANCE_ID.
#[test]
fn replaced_static_member_is_fenced() {
    let mut g = Group::new("g", TIMING);
    g.join(0, req("", Some("i-1"), &["range"]), 1);
    g.join(0, req("", Some("i-2"), &["range"]), 2);
    let r = g.tick(150);
    let (a, b) = (joined(&r, 1), joined(&r, 2));
    let (leader, follower) = if a.leader == a.member_id { (a, b) } else { (b, a) };
    let follower_instance = if g.instances.get("i-1") == Some(&follower.member_id) {
        "i-1"
    } else {
        "i-2"
    };
    g.sync(160, &follower.member_id, Some(follower_instance), 1, vec![], 3);
    g.sync(170, &leader.member_id, None, 1, vec![], 4);
    let r = g.join(500, req("", Some(follower_instance), &["range"]), 5);
    let newer = joined(&r, 5);
    assert_eq!(newer.error, NONE);
    let old = &follower.member_id;
    assert_eq!(g.heartbeat(510, old, Some(follower_instance), 1), FENCED_INSTANCE_ID);
    assert_eq!(g.commit_allowed(old, Some(follower_instance), 1), FENCED_INSTANCE_ID);
    let r = g.sync(520, old, Some(follower_instance), 1, vec![], 6);
    assert_eq!(synced(&r, 6).error, FENCED_INSTANCE_ID);
    let r = g.join(530, req(old, Some(follower_instance), &["range"]), 7);
    assert_eq!(joined(&r, 7).error, FENCED_INSTANCE_ID);
    assert_eq!(g.heartbeat(540, &newer.member_id, Some(follower_instance), 1), NONE);
}

/// A coordinator that stops coordinating answers the members waiting in a rebalance at
/// once (NOT_COORDINATOR), so they look for the new coordinator instead of waiting out
/// their rebalance timeout.
#[test]
fn unloading_answers_waiting_joins_and_syncs_not_coordinator() {
    // A member waiting in JoinGroup for the others to rejoin.
    let mut g = Group::new("g", TIMING);
    stable_pair(&mut g);
    assert!(g.join(300, req("", None, &["range"]), 7).is_empty());
    let out = g.unload();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(joined(&out, 7).error, NOT_COORDINATOR);
    assert!(g.unload().is_empty(), "nothing waits any more");
    // A follower waiting in SyncGroup for its leader's assignment.
    let mut g = Group::new("g", TIMING);
    assert!(g.join(0, req("", None, &["range"]), 1).is_empty());
    assert!(g.join(10, req("", None, &["range"]), 2).is_empty());
    let r = g.tick(150);
    let (a, b) = (joined(&r, 1), joined(&r, 2));
    let follower = if a.leader == a.member_id { b } else { a };
    assert!(g.sync(160, &follower.member_id, None, 1, vec![], 3).is_empty());
    let out = g.unload();
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(synced(&out, 3).error, NOT_COORDINATOR);
}

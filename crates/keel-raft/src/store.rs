//! openraft's storage over Keel's partition log: the partition log is the Raft log.
//!
//! One Raft entry is one log entry. A data entry (a Kafka record batch) is given its Kafka
//! offsets as it is appended: the next offset of the log, which counts only data entries,
//! so Raft blank and membership entries take a log position but no offset. Every replica
//! appends the same entries in the same order and so assigns the same offsets: that is the
//! offset translator, and it needs no table of its own because each entry stores its
//! offset range.
//!
//! Durability: [`LogStorage::append`] writes to the OS and hands openraft's callback to a
//! flusher task, which fsyncs once for everything queued (group commit) before reporting
//! the entries durable. openraft counts a replica's entries towards a commit only after
//! that callback, so an `acks=all` write is on disk on a majority before it is applied.
//!
//! The state machine is the high watermark: applying an entry advances `next_offset`.
//! Snapshots carry no records (they stay in the log); a snapshot says where the log
//! continues after a purge, so a replica that fell behind the leader's retention starts
//! its log at the leader's log start.
//!
//! The vote is saved (fsynced on every change, as Raft needs) in the node's vote journal
//! ([`crate::votes`]) for partition replicas, or in `raft-vote.json` beside the segments.
//! Other files beside the segments:
//! `raft-purged.json` (fsynced; where the log was purged), `raft-applied.json` (written
//! about once a second without fsync: a stale one only makes a restart re-apply more).

use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_log::{Entry, EntryKind, LogStore};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder, SnapshotMeta, StorageIOError,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::{
    Applied, Apply, LogId, Membership, Payload, Placed, SnapshotBody, StorageError, StoredMembership, TypeConfig, Vote,
};

/// Largest total payload one AppendEntries carries (the first entry always goes whole).
pub const REPLICATION_BYTES_MAX: usize = 1024 * 1024;

/// How often the applied position is written to disk.
const APPLIED_PERSIST_INTERVAL: Duration = Duration::from_secs(1);

/// The committed state of a group, as its state machine has applied it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub last_applied: Option<LogId>,
    /// Offset after the last applied data entry: the high watermark.
    pub next_offset: i64,
    pub membership: StoredMembership,
}

/// Where the log was purged, kept durably so the log's prefix can be described after the
/// entries themselves are gone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Purged {
    last_purged: Option<LogId>,
    /// Offset after the last purged entry.
    next_offset: i64,
    /// The membership in effect at the purge point.
    membership: StoredMembership,
}

/// State shared by a group's log storage, log readers, state machine and the broker.
pub struct Shared {
    log: Mutex<Box<dyn LogStore>>,
    dir: Option<PathBuf>,
    /// Where the vote is saved (`None`: the group's directory, if any).
    vote_slot: Option<VoteSlot>,
    fsync: std::sync::atomic::AtomicBool,
    hook: Arc<dyn Apply>,
    vote: Mutex<Option<Vote>>,
    purged: Mutex<Purged>,
    /// Every membership applied since the purge point, oldest first.
    memberships: Mutex<Vec<StoredMembership>>,
    applied: watch::Sender<AppliedState>,
    applied_persisted_at: Mutex<Instant>,
    /// An append is waiting for disk space: the group's Raft core is held in the append
    /// until it succeeds, so this replica neither acknowledges nor leads meanwhile.
    write_stalled: std::sync::atomic::AtomicBool,
    /// A read found a damaged entry in this replica's log while it ran.
    damage_found: std::sync::atomic::AtomicBool,
    /// Proposers waiting for the leader's own copy of an entry to be durable (acks=1),
    /// by ticket.
    local_acks: Mutex<HashMap<u64, oneshot::Sender<Placed>>>,
    next_ticket: std::sync::atomic::AtomicU64,
    /// The entries appended and not yet applied, as the log holds them.
    recent: Mutex<Recent>,
    /// The last entry this replica had applied when it opened, if its log no longer
    /// reaches it (see [`Shared::lost_through`]).
    lost_through: Option<u64>,
}

/// Most payload bytes [`Recent`] keeps per group; older entries are read from the log.
const RECENT_BYTES_MAX: usize = 1024 * 1024;

/// Entries appended to this replica's log and not yet applied here: replication to the
/// followers and the state machine ask for them moments after they are appended, and get
/// them from memory instead of reading them back from the log. A contiguous run, ending at
/// the log's last entry; whatever changes the log's tail (truncation, a reset) clears what
/// it no longer holds, and applying drops what was applied.
#[derive(Default)]
struct Recent {
    entries: std::collections::VecDeque<openraft::Entry<TypeConfig>>,
    bytes: usize,
}

impl Recent {
    fn payload_len(e: &openraft::Entry<TypeConfig>) -> usize {
        match &e.payload {
            EntryPayload::Normal(Payload(b, _, _)) => b.len(),
            _ => 0,
        }
    }

    fn push(&mut self, e: openraft::Entry<TypeConfig>) {
        if self.entries.back().map(|l| l.log_id.index + 1) != Some(e.log_id.index) {
            self.clear();
        }
        self.bytes += Self::payload_len(&e);
        self.entries.push_back(e);
        while self.bytes > RECENT_BYTES_MAX {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= Self::payload_len(&e);
        }
    }

    /// Drops entries at and after `index`.
    fn truncate_from(&mut self, index: u64) {
        while self.entries.back().is_some_and(|e| e.log_id.index >= index) {
            if let Some(e) = self.entries.pop_back() {
                self.bytes -= Self::payload_len(&e);
            }
        }
    }

    /// Drops entries up to and including `index`.
    fn drop_through(&mut self, index: u64) {
        while self.entries.front().is_some_and(|e| e.log_id.index <= index) {
            self.pop_front();
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Entries from `start` (which must be held) up to `end`, within `max_bytes` (at least
    /// one); `None` when `start` is not held.
    fn range(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<openraft::Entry<TypeConfig>>> {
        let first = self.entries.front()?.log_id.index;
        if start < first || start >= first + self.entries.len() as u64 {
            return None;
        }
        let mut out = Vec::new();
        let mut budget = max_bytes;
        for e in self.entries.range((start - first) as usize..) {
            if e.log_id.index >= end {
                break;
            }
            budget = budget.saturating_sub(Self::payload_len(e));
            out.push(e.clone());
            if budget == 0 {
                break;
            }
        }
        Some(out)
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn storage_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::write_logs(AnyError::error(e.to_string())).into()
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    StorageIOError::read_logs(AnyError::error(e.to_string())).into()
}

/// Writes `value` to `dir/name` atomically (temp file, fsync, rename, fsync of the
/// directory when `durable`).
fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T, durable: bool) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io_err)?;
    if durable {
        return keel_log::durable::replace_file(&dir.join(name), &bytes);
    }
    let tmp = dir.join(format!("{name}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        keel_log::fault::created(&tmp);
        f.write_all(&bytes)?;
    }
    std::fs::rename(&tmp, dir.join(name))?;
    keel_log::fault::renamed(&tmp, &dir.join(name));
    Ok(())
}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> io::Result<Option<T>> {
    match std::fs::read(dir.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(io_err),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Where a partition replica's vote is kept: the node's vote journal, under a key no other
/// replica ever uses (the broker names the topic's id, the partition and the replica id).
#[derive(Debug, Clone)]
pub struct VoteSlot {
    pub store: Arc<crate::votes::VoteStore>,
    pub key: String,
}

impl VoteSlot {
    /// Whether a vote is stored for this replica (in the journal, or in a group directory
    /// from before the journal).
    pub fn has_vote(&self, dir: &Path) -> bool {
        self.store.get(&self.key).is_some() || dir.join(VOTE_FILE).exists()
    }
}

/// A group's own vote file: the controller's, and partition replicas' from before the
/// node's vote journal.
const VOTE_FILE: &str = "raft-vote.json";

/// Reads a group's stored vote, and makes the replica start as a follower: openraft
/// resumes leadership at once when the stored vote is a committed one for this node, and a
/// leader whose log lost entries it once had (damage cut away, a torn tail its followers
/// had made durable) would write new entries under the same log ids as the lost ones,
/// which its followers take for the entries they already hold: the replicas would silently
/// diverge. The vote keeps its term and candidate (this node still votes for no one else
/// in that term); only the mark that a quorum granted it goes, so the replica waits for
/// the others to elect a leader whose log has everything committed.
///
/// A vote still in the group's directory when the replica has a journal slot moves into
/// the journal (durably, before the file goes).
pub(crate) async fn load_vote(dir: Option<&Path>, slot: Option<&VoteSlot>) -> io::Result<Option<Vote>> {
    let journal_vote = slot.and_then(|s| s.store.get(&s.key));
    let file_vote = match (journal_vote, dir) {
        (None, Some(d)) => {
            let d = d.to_path_buf();
            tokio::task::spawn_blocking(move || read_json::<Vote>(&d, VOTE_FILE))
                .await
                .map_err(io_err)??
        }
        _ => None,
    };
    let Some(vote) = journal_vote.or(file_vote) else {
        return Ok(None);
    };
    let demoted = Vote {
        committed: false,
        ..vote
    };
    let migrating = slot.is_some() && journal_vote.is_none();
    if vote.committed || migrating {
        save_vote_to(dir, slot, demoted).await?;
    }
    if let (true, Some(d)) = (migrating, dir) {
        // Moved into the journal: the file must not outlive it as a second truth.
        let file = d.join(VOTE_FILE);
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(file)).await;
    }
    Ok(Some(demoted))
}

/// Saves a vote durably: in the journal slot when there is one, else in the group's
/// directory (two fsyncs, off the async workers), else nowhere (in-memory groups).
async fn save_vote_to(dir: Option<&Path>, slot: Option<&VoteSlot>, vote: Vote) -> io::Result<()> {
    if let Some(s) = slot {
        return s.store.save(&s.key, vote).await.map_err(io::Error::other);
    }
    if let Some(d) = dir {
        let d = d.to_path_buf();
        return tokio::task::spawn_blocking(move || write_json(&d, VOTE_FILE, &vote, true))
            .await
            .map_err(io_err)?;
    }
    Ok(())
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 0), index)
}

impl Shared {
    /// Opens a group's storage over `log`. `dir` holds the Raft files (`None` keeps them in
    /// memory, for tests). `fsync` false acknowledges appends before they are durable.
    /// `vote` is the stored vote, as [`load_vote`] read it.
    pub(crate) fn open(
        log: Box<dyn LogStore>,
        dir: Option<PathBuf>,
        vote: (Option<Vote>, Option<VoteSlot>),
        fsync: bool,
        hook: Arc<dyn Apply>,
    ) -> io::Result<Arc<Shared>> {
        let (vote, vote_slot) = vote;
        let (purged, applied) = match &dir {
            Some(d) => (
                read_json::<Purged>(d, "raft-purged.json")?.unwrap_or_default(),
                read_json::<AppliedState>(d, "raft-applied.json").unwrap_or_else(|e| {
                    warn!(dir = %d.display(), error = %e, "ignoring unreadable raft-applied.json");
                    None
                }),
            ),
            None => (Purged::default(), None),
        };
        if purged.last_purged.is_none() && log.first_index() > 0 {
            return Err(io::Error::other(format!(
                "log starts at index {} but no purge point is recorded",
                log.first_index()
            )));
        }
        let from_purge = AppliedState {
            last_applied: purged.last_purged,
            next_offset: if purged.last_purged.is_some() {
                purged.next_offset
            } else {
                log.start_offset()
            },
            membership: purged.membership.clone(),
        };
        // A log that ends before an entry this replica applied lost entries it had (a disk
        // that dropped writes at power loss, a segment gone missing): not a torn tail, but
        // damage, and the replica must not vote as if its log were whole.
        let lost_through = applied
            .as_ref()
            .and_then(|a| a.last_applied)
            .map(|l| l.index)
            .filter(|l| *l >= log.next_index() && Some(*l) > purged.last_purged.map(|p| p.index));
        if let Some(l) = lost_through {
            tracing::error!(
                dir = ?dir,
                applied_through = l,
                log_ends_at = log.next_index(),
                "the log ends before entries this replica applied: it lost data it had; it votes again once it has caught up"
            );
        }
        // Believe the applied file only if the log still holds that entry with that term.
        let applied = match applied {
            Some(a) if a.last_applied.map(|l| l.index) > purged.last_purged.map(|l| l.index) => {
                let ok = a
                    .last_applied
                    .and_then(|l| {
                        log.read(l.index, 1).ok().and_then(|es| {
                            es.first().map(|e| {
                                e.index == l.index && e.term == l.leader_id.term && e.next_offset() == a.next_offset
                            })
                        })
                    })
                    .unwrap_or(false);
                if ok {
                    a
                } else {
                    warn!("applied position is not in the log any more; re-applying from the purge point");
                    from_purge
                }
            }
            _ => from_purge,
        };
        let shared = Arc::new(Shared {
            log: Mutex::new(log),
            dir,
            vote_slot,
            fsync: std::sync::atomic::AtomicBool::new(fsync),
            hook,
            vote: Mutex::new(vote),
            memberships: Mutex::new(vec![applied.membership.clone()]),
            purged: Mutex::new(purged),
            applied: watch::Sender::new(applied),
            applied_persisted_at: Mutex::new(Instant::now()),
            write_stalled: std::sync::atomic::AtomicBool::new(false),
            damage_found: std::sync::atomic::AtomicBool::new(false),
            local_acks: Mutex::new(HashMap::new()),
            next_ticket: std::sync::atomic::AtomicU64::new(1),
            recent: Mutex::new(Recent::default()),
            lost_through,
        });
        Ok(shared)
    }

    /// When the log, at open, ended before an entry this replica had applied: that
    /// entry's index. The replica lost entries it had, and holds its vote until it has
    /// caught up (as a replica whose log was repaired does).
    pub fn lost_through(&self) -> Option<u64> {
        self.lost_through
    }

    /// The log, for reads by the broker. Hold the guard briefly.
    pub fn log(&self) -> MutexGuard<'_, Box<dyn LogStore>> {
        self.log.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recent(&self) -> MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether appends are fsynced before they count (a topic's flush policy can change).
    /// A ticket to put in a proposal's [`Payload`]: the receiver gets the entry's position
    /// once the leader's log has it durably (or is dropped if the append fails).
    pub fn local_ack_ticket(&self) -> (u64, oneshot::Receiver<Placed>) {
        let ticket = self.next_ticket.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.local_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ticket, tx);
        (ticket, rx)
    }

    /// Stops waiting on `ticket` (its proposal was refused or already committed).
    pub fn forget_ticket(&self, ticket: u64) {
        self.local_acks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ticket);
    }

    /// The entries under these tickets are durable here: tell their proposers.
    fn locally_durable(&self, placed: Vec<(u64, Placed)>) {
        if placed.is_empty() {
            return;
        }
        let mut acks = self.local_acks.lock().unwrap_or_else(|e| e.into_inner());
        for (ticket, p) in placed {
            if let Some(tx) = acks.remove(&ticket) {
                let _ = tx.send(p);
            }
        }
    }

    /// Is an append waiting for disk space?
    /// Records that a read met a damaged entry (checksum or framing) in this log.
    pub fn note_damage(&self) {
        self.damage_found.store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether a read met a damaged entry since the log was opened.
    pub fn damage_found(&self) -> bool {
        self.damage_found.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn write_stalled(&self) -> bool {
        self.write_stalled.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn set_fsync(&self, fsync: bool) {
        self.fsync.store(fsync, std::sync::atomic::Ordering::Release);
    }

    /// fsyncs everything appended so far (for policies that do not fsync every append).
    pub fn sync(&self) -> Result<(), String> {
        let h = self.log().sync_handle().map_err(|e| e.to_string())?;
        h.sync().map_err(|e| e.to_string())
    }

    pub fn applied(&self) -> AppliedState {
        self.applied.borrow().clone()
    }

    /// Watches the applied state (the high watermark moves with it).
    pub fn subscribe(&self) -> watch::Receiver<AppliedState> {
        self.applied.subscribe()
    }

    fn purged(&self) -> Purged {
        self.purged.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Writes the applied position (best effort; a stale file only costs re-applying).
    pub fn persist_applied(&self) {
        let Some(dir) = &self.dir else { return };
        let a = self.applied();
        if let Err(e) = write_json(dir, "raft-applied.json", &a, false) {
            warn!(dir = %dir.display(), error = %e, "could not write raft-applied.json");
        }
        *self.applied_persisted_at.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    fn save_purged(&self, p: &Purged) -> io::Result<()> {
        if let Some(dir) = &self.dir {
            write_json(dir, "raft-purged.json", p, true)?;
        }
        *self.purged.lock().unwrap_or_else(|e| e.into_inner()) = p.clone();
        Ok(())
    }

    /// Turns an openraft entry into a log entry at the log's next offset. A data entry's
    /// payload is handed to the hook to place (taken, so that a batch held nowhere else is
    /// patched in place) and put back placed: placing it again, on a retry, changes nothing.
    fn to_log_entry(&self, e: &mut openraft::Entry<TypeConfig>, next_offset: i64) -> Result<Entry, String> {
        let index = e.log_id.index;
        let term = e.log_id.leader_id.term;
        let non_data = |kind, payload| Entry {
            index,
            term,
            kind,
            offset: next_offset,
            offset_count: 0,
            max_timestamp: -1,
            payload,
        };
        Ok(match &mut e.payload {
            EntryPayload::Blank => non_data(EntryKind::Blank, Bytes::new()),
            EntryPayload::Membership(m) => non_data(
                EntryKind::Membership,
                Bytes::from(serde_json::to_vec(m).map_err(|e| e.to_string())?),
            ),
            EntryPayload::Normal(Payload(bytes, _, count)) => {
                let stored = self.hook.place(std::mem::take(bytes), next_offset, term)?;
                *bytes = stored.payload.clone();
                *count = Some(stored.offsets);
                Entry::data(
                    index,
                    term,
                    next_offset,
                    stored.offsets,
                    stored.max_timestamp,
                    stored.payload,
                )
            }
        })
    }

    fn from_log_entry(e: Entry) -> Result<openraft::Entry<TypeConfig>, String> {
        let payload = match e.kind {
            EntryKind::Data => EntryPayload::Normal(Payload(e.payload, None, Some(e.offset_count))),
            EntryKind::Blank => EntryPayload::Blank,
            EntryKind::Membership => {
                let m: Membership = serde_json::from_slice(&e.payload).map_err(|err| err.to_string())?;
                EntryPayload::Membership(m)
            }
        };
        Ok(openraft::Entry {
            log_id: log_id(e.term, e.index),
            payload,
        })
    }

    fn read_range(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<openraft::Entry<TypeConfig>>, StorageError> {
        if start >= end {
            return Ok(Vec::new());
        }
        if let Some(entries) = self.recent().range(start, end, max_bytes) {
            return Ok(entries);
        }
        let mut out = Vec::new();
        let mut next = start;
        let mut budget = max_bytes;
        let log = self.log();
        while next < end {
            let entries = match log.read(next, budget.max(1)) {
                Ok(entries) => entries,
                Err(e) => {
                    if matches!(e, keel_log::LogError::Corrupt { .. }) {
                        self.note_damage();
                    }
                    return Err(read_err(e));
                }
            };
            if entries.is_empty() {
                break;
            }
            for e in entries {
                if e.index >= end {
                    return Ok(out);
                }
                if e.index != next {
                    return Err(read_err(format!(
                        "log returned index {} where {} was expected",
                        e.index, next
                    )));
                }
                next += 1;
                budget = budget.saturating_sub(e.payload.len());
                out.push(Self::from_log_entry(e).map_err(read_err)?);
            }
            if budget == 0 {
                break;
            }
        }
        Ok(out)
    }

    fn snapshot_at_purge_point(&self) -> Option<Snapshot<TypeConfig>> {
        let p = self.purged();
        let last = p.last_purged?;
        Some(Snapshot {
            meta: SnapshotMeta {
                last_log_id: Some(last),
                last_membership: p.membership.clone(),
                snapshot_id: format!("{}-{}", last.leader_id.term, last.index),
            },
            snapshot: Box::new(SnapshotBody {
                next_offset: p.next_offset,
                state: self.hook.snapshot(),
            }),
        })
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

/// openraft's log storage for one group.
pub struct LogStorage {
    shared: Arc<Shared>,
    flusher: mpsc::UnboundedSender<FlushRequest>,
}

impl LogStorage {
    /// Must be called inside a tokio runtime: starts the group-commit flusher.
    pub fn new(shared: Arc<Shared>) -> LogStorage {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flusher(shared.clone(), rx));
        LogStorage { shared, flusher: tx }
    }
}

/// An append waiting for the fsync: openraft's callback, and the (ticket, position) of each
/// entry a proposer waits on locally (acks=1).
type FlushRequest = (LogFlushed<TypeConfig>, Vec<(u64, Placed)>);

/// Why appends failed when the runtime cancelled their fsync before it ran.
const STOPPING: &str = "fsync not run: the node is stopping";

/// Fsyncs once for every append queued since the last fsync, then reports them durable.
async fn flusher(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<FlushRequest>) {
    while let Some((first, placed)) = rx.recv().await {
        let mut waiting = vec![first];
        let mut placed = placed;
        while let Ok((cb, more)) = rx.try_recv() {
            waiting.push(cb);
            placed.extend(more);
        }
        let handle = shared.log().sync_handle();
        let started = Instant::now();
        let result: Result<(), String> = match handle {
            Ok(h) => match tokio::task::spawn_blocking(move || h.sync()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("fsync failed: {e}")),
                // Only a runtime shutting down cancels a blocking task before it runs: the
                // appends stay unacknowledged. The fsync never ran, so no page was lost to
                // a failed one and the log needs no poisoning: the process is stopping.
                Err(e) if e.is_cancelled() => Err(STOPPING.into()),
                Err(e) => Err(format!("fsync task failed: {e}")),
            },
            Err(e) => Err(e.to_string()),
        };
        shared.hook.fsynced(started.elapsed().as_secs_f64());
        if let Err(reason) = &result {
            if reason == STOPPING {
                info!(%reason, "appends left unsynced");
            } else {
                error!(%reason, "replicated log poisoned");
                shared.log().poison(reason.clone());
            }
        } else {
            shared.locally_durable(placed);
        }
        for cb in waiting {
            cb.log_io_completed(result.clone().map_err(io::Error::other));
        }
    }
}

/// A read handle used by openraft's replication tasks.
#[derive(Clone)]
pub struct LogReader {
    shared: Arc<Shared>,
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<openraft::Entry<TypeConfig>>, StorageError> {
        let (start, end) = bounds(&range);
        self.shared.read_range(start, end, usize::MAX)
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<openraft::Entry<TypeConfig>>, StorageError> {
        self.shared.read_range(start, end, REPLICATION_BYTES_MAX)
    }
}

impl RaftLogReader<TypeConfig> for LogStorage {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<openraft::Entry<TypeConfig>>, StorageError> {
        let (start, end) = bounds(&range);
        self.shared.read_range(start, end, usize::MAX)
    }
}

impl RaftLogStorage<TypeConfig> for LogStorage {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let purged = self.shared.purged().last_purged;
        let log = self.shared.log();
        let last = match log.last_term() {
            Some(term) if log.next_index() > log.first_index() => Some(log_id(term, log.next_index() - 1)),
            _ => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.max(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        LogReader {
            shared: self.shared.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        save_vote_to(self.shared.dir.as_deref(), self.shared.vote_slot.as_ref(), *vote)
            .await
            .map_err(|e| StorageError::from(StorageIOError::write_vote(AnyError::error(e.to_string()))))?;
        *self.shared.vote.lock().unwrap_or_else(|e| e.into_inner()) = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(*self.shared.vote.lock().unwrap_or_else(|e| e.into_inner()))
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut placed = Vec::new();
        let mut entries = entries.into_iter().peekable();
        // A full disk is waited out: the failed append left the log as it was, and it is
        // retried until space is freed. Any other failure is fatal to this replica's group.
        let mut backoff = Duration::from_millis(10);
        while entries.peek().is_some() {
            let r = {
                let mut log = self.shared.log();
                let mut r = Ok(());
                while let Some(e) = entries.peek_mut() {
                    let entry = self.shared.to_log_entry(e, log.next_offset()).map_err(storage_err)?;
                    if let Err(err) = log.append(&entry) {
                        r = Err(err);
                        break;
                    }
                    let Some(mut e) = entries.next() else { break };
                    if let EntryPayload::Normal(Payload(_, ticket, _)) = &mut e.payload {
                        if let Some(ticket) = ticket.take() {
                            placed.push((
                                ticket,
                                Placed {
                                    index: e.log_id.index,
                                    base_offset: entry.offset,
                                },
                            ));
                        }
                    }
                    // Kept as the log holds it: the batch with its offsets written in.
                    self.shared.recent().push(e);
                }
                r
            };
            match r {
                Ok(()) => {}
                Err(err) if err.is_disk_full() => {
                    if !self
                        .shared
                        .write_stalled
                        .swap(true, std::sync::atomic::Ordering::AcqRel)
                    {
                        warn!(dir = ?self.shared.dir, "disk full: holding this replica's appends until space is freed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(err) => return Err(storage_err(err)),
            }
        }
        if self.shared.write_stalled() {
            self.shared
                .write_stalled
                .store(false, std::sync::atomic::Ordering::Release);
            warn!(dir = ?self.shared.dir, "disk space freed: appends resume");
        }
        if self.shared.fsync.load(std::sync::atomic::Ordering::Acquire) {
            self.flusher
                .send((callback, placed))
                .map_err(|_| storage_err("the log's flusher has stopped"))?;
        } else {
            self.shared.locally_durable(placed);
            callback.log_io_completed(Ok(()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut log = self.shared.log();
        self.shared.recent().truncate_from(log_id.index);
        if log_id.index <= log.first_index() {
            let start = log.start_offset();
            log.reset(log_id.index, start).map_err(storage_err)?;
        } else {
            log.truncate_after(log_id.index - 1).map_err(storage_err)?;
        }
        Ok(())
    }

    async fn purge(&mut self, upto: LogId) -> Result<(), StorageError> {
        let current = self.shared.purged();
        if current.last_purged.map(|l| l.index) >= Some(upto.index) {
            return Ok(());
        }
        let next_offset = {
            let log = self.shared.log();
            match log.read(upto.index, 1).map_err(read_err)?.first() {
                Some(e) if e.index == upto.index => e.next_offset(),
                _ => {
                    return Err(storage_err(format!(
                        "purge to {} which the log does not hold",
                        upto.index
                    )))
                }
            }
        };
        let membership = {
            let ms = self.shared.memberships.lock().unwrap_or_else(|e| e.into_inner());
            ms.iter()
                .rev()
                .find(|m| m.log_id().map(|l| l.index) <= Some(upto.index))
                .cloned()
                .unwrap_or(current.membership.clone())
        };
        let p = Purged {
            last_purged: Some(upto),
            next_offset,
            membership,
        };
        self.shared.save_purged(&p).map_err(storage_err)?;
        self.shared
            .memberships
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|m| m.log_id().map(|l| l.index) >= Some(upto.index) || *m == p.membership);
        self.shared.log().purge_before(upto.index + 1).map_err(storage_err)?;
        self.shared.recent().drop_through(upto.index);
        Ok(())
    }
}

/// openraft's state machine for one group: applying advances the high watermark and calls
/// the broker's [`Apply`] hook.
pub struct StateMachine {
    shared: Arc<Shared>,
}

impl StateMachine {
    pub fn new(shared: Arc<Shared>) -> StateMachine {
        StateMachine { shared }
    }
}

/// Builds metadata-only snapshots at the applied position.
pub struct SnapshotBuilder {
    shared: Arc<Shared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let a = self.shared.applied();
        let id = a
            .last_applied
            .map(|l| format!("{}-{}", l.leader_id.term, l.index))
            .unwrap_or_default();
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
                snapshot_id: id,
            },
            snapshot: Box::new(SnapshotBody {
                next_offset: a.next_offset,
                state: self.shared.hook.snapshot(),
            }),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.shared.applied();
        Ok((a.last_applied, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = openraft::Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.shared.applied();
        let mut out = Vec::new();
        let mut membership_changed = false;
        for e in entries {
            let base = state.next_offset;
            match &e.payload {
                EntryPayload::Normal(Payload(bytes, _, count)) => {
                    // Set when the entry entered this replica's log (from memory or read back).
                    let count = count.map(i64::from).ok_or_else(|| {
                        StorageError::from(StorageIOError::apply(
                            e.log_id,
                            AnyError::error("a data entry to apply carries no offset count"),
                        ))
                    })?;
                    state.next_offset = base + count;
                    if let Err(why) = self.shared.hook.apply(e.log_id.index, base, state.next_offset, bytes) {
                        tracing::error!(index = e.log_id.index, %why, "a committed entry cannot be applied: the group stops");
                        return Err(StorageError::from(StorageIOError::apply(
                            e.log_id,
                            AnyError::error(why),
                        )));
                    }
                }
                EntryPayload::Membership(m) => {
                    state.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    self.shared
                        .memberships
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(state.membership.clone());
                    membership_changed = true;
                }
                EntryPayload::Blank => {}
            }
            state.last_applied = Some(e.log_id);
            out.push(Applied {
                index: e.log_id.index,
                base_offset: base,
                next_offset: state.next_offset,
            });
        }
        if let Some(last) = state.last_applied {
            self.shared.recent().drop_through(last.index);
        }
        self.shared.applied.send_replace(state);
        let due = self
            .shared
            .applied_persisted_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= APPLIED_PERSIST_INTERVAL;
        if membership_changed || due {
            self.shared.persist_applied();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            shared: self.shared.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBody>, StorageError> {
        Ok(Box::default())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<crate::NodeId, crate::Node>,
        snapshot: Box<SnapshotBody>,
    ) -> Result<(), StorageError> {
        let Some(last) = meta.last_log_id else {
            return Ok(());
        };
        // Keep the log if it already holds the snapshot's last entry; otherwise start over
        // where the leader's log continues.
        {
            let mut log = self.shared.log();
            let holds = log
                .read(last.index, 1)
                .ok()
                .and_then(|es| {
                    es.first()
                        .map(|e| e.index == last.index && e.term == last.leader_id.term)
                })
                .unwrap_or(false);
            if !holds {
                self.shared.recent().clear();
                log.reset(last.index + 1, snapshot.next_offset).map_err(storage_err)?;
            }
        }
        let p = Purged {
            last_purged: Some(last),
            next_offset: snapshot.next_offset,
            membership: meta.last_membership.clone(),
        };
        self.shared.save_purged(&p).map_err(storage_err)?;
        *self.shared.memberships.lock().unwrap_or_else(|e| e.into_inner()) = vec![meta.last_membership.clone()];
        self.shared.hook.restore(&snapshot.state);
        self.shared.applied.send_replace(AppliedState {
            last_applied: Some(last),
            next_offset: snapshot.next_offset,
            membership: meta.last_membership.clone(),
        });
        self.shared.persist_applied();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.shared.snapshot_at_purge_point())
    }
}

//! The node's vote journal: the Raft votes of all of a node's partition replicas in one
//! file, saved with one fsync for every vote asked for at the same moment.
//!
//! Raft needs a replica's vote on disk before it answers a vote request or starts a
//! campaign. Saved one file per group (a temp file, two fsyncs and a rename), a node
//! leading a third of a thousand partitions that dies makes the survivors save hundreds
//! of votes at once, each slower than the election timeout, and every round starts again
//! in a higher term. Here a writer thread takes every save queued, appends them to one
//! journal and fsyncs once (group commit), as Redpanda's node-wide key-value store and
//! TiKV's shared Raft log engine do.
//!
//! The journal is a sequence of records `[len u32 LE][crc32c u32 LE][body]`, the body a
//! JSON `{"k": key, "v": vote or null}` (null forgets the key). At open the records are
//! replayed, the last one for a key winning. A record cut short or failing its checksum at
//! the very end is a save that never completed (its fsync never returned, so no vote was
//! answered on it) and is cut away; a bad record with a good one after it is damage, and
//! opening fails: a node that forgot votes it cast could vote twice in one term. When the
//! journal has grown well past what it holds, the writer rewrites it with one record per
//! key (temp file, fsync, rename, fsync of the directory).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::Vote;

/// Saves queued at once before the writer stops to fsync: bounds one round's latency.
const ROUND_MAX: usize = 4096;
/// Saves waiting for the writer; a full queue makes callers wait.
const QUEUE_MAX: usize = 16 * 1024;
/// The journal is rewritten when it exceeds this and four times its live records.
const COMPACT_MIN_BYTES: u64 = 1024 * 1024;
/// Longest record body accepted: a key is a group's name and a vote is tens of bytes.
const BODY_MAX: usize = 64 * 1024;
const HEADER: usize = 8;

#[derive(Serialize, Deserialize)]
struct Record {
    k: String,
    v: Option<Vote>,
}

struct Save {
    key: String,
    vote: Option<Vote>,
    done: Option<oneshot::Sender<Result<(), String>>>,
}

/// The vote journal of one node.
pub struct VoteStore {
    path: PathBuf,
    /// The votes as the journal holds them (durable ones only).
    votes: Arc<Mutex<HashMap<String, Vote>>>,
    tx: mpsc::Sender<Save>,
}

impl std::fmt::Debug for VoteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoteStore").field("path", &self.path).finish()
    }
}

fn encode(r: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let body = serde_json::to_vec(r).map_err(io::Error::other)?;
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// The record at `pos`, and where the next one starts; `None` if there is no whole record
/// with a good checksum there.
fn record_at(data: &[u8], pos: usize) -> Option<(Record, usize)> {
    let header = data.get(pos..pos + HEADER)?;
    let len = u32::from_le_bytes(header.get(0..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
    if len > BODY_MAX {
        return None;
    }
    let body = data.get(pos + HEADER..pos + HEADER + len)?;
    if crc32c::crc32c(body) != crc {
        return None;
    }
    let r = serde_json::from_slice(body).ok()?;
    Some((r, pos + HEADER + len))
}

/// Replays a journal: the votes, and the length of its valid prefix.
fn replay(data: &[u8]) -> io::Result<(HashMap<String, Vote>, usize)> {
    let mut votes = HashMap::new();
    let mut pos = 0;
    while pos < data.len() {
        match record_at(data, pos) {
            Some((r, next)) => {
                match r.v {
                    Some(v) => votes.insert(r.k, v),
                    None => votes.remove(&r.k),
                };
                pos = next;
            }
            None => {
                if let Some(good) = (pos + 1..data.len()).find(|p| record_at(data, *p).is_some()) {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("vote journal damaged at byte {pos} (a valid record follows at {good})"),
                    ));
                }
                return Ok((votes, pos));
            }
        }
    }
    Ok((votes, pos))
}

fn sync(f: &std::fs::File) -> io::Result<()> {
    keel_log::fault::fsync()?;
    f.sync_data()
}

fn sync_dir(path: &Path) -> io::Result<()> {
    keel_log::durable::sync_dir(path.parent().unwrap_or(Path::new(".")))
}

impl VoteStore {
    /// Opens (or creates) the journal at `path` and starts its writer thread. Must be
    /// called inside a tokio runtime only for the saves; opening itself is blocking I/O.
    pub fn open(path: &Path) -> io::Result<Arc<VoteStore>> {
        let mut data = Vec::new();
        let existed = match std::fs::File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut data)?;
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(e),
        };
        let (votes, valid) = replay(&data)?;
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        if valid < data.len() {
            warn!(
                path = %path.display(),
                cut = data.len() - valid,
                "vote journal ends in an unfinished save: cut back to its last whole record"
            );
            file.set_len(valid as u64)?;
            sync(&file)?;
        }
        keel_log::fault::opened(path, valid as u64);
        if !existed {
            keel_log::fault::created(path);
            sync(&file)?;
            sync_dir(path)?;
        }
        let mut live = HashMap::with_capacity(votes.len());
        for (k, v) in &votes {
            let mut buf = Vec::new();
            encode(
                &Record {
                    k: k.clone(),
                    v: Some(*v),
                },
                &mut buf,
            )?;
            live.insert(k.clone(), buf.len() as u64);
        }
        let live_bytes = live.values().sum();
        let votes = Arc::new(Mutex::new(votes));
        let (tx, rx) = mpsc::channel(QUEUE_MAX);
        let writer = Writer {
            path: path.to_path_buf(),
            file,
            len: valid as u64,
            votes: votes.clone(),
            live,
            live_bytes,
        };
        std::thread::Builder::new()
            .name("keel-votes".into())
            .spawn(move || writer.run(rx))?;
        Ok(Arc::new(VoteStore {
            path: path.to_path_buf(),
            votes,
            tx,
        }))
    }

    /// The vote saved under `key`.
    pub fn get(&self, key: &str) -> Option<Vote> {
        self.votes.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied()
    }

    /// How many keys hold a vote.
    pub fn len(&self) -> usize {
        self.votes.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Saves `vote` under `key`; returns once it is durable.
    pub async fn save(&self, key: &str, vote: Vote) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Save {
                key: key.to_string(),
                vote: Some(vote),
                done: Some(done),
            })
            .await
            .map_err(|_| "the vote journal's writer has stopped".to_string())?;
        rx.await
            .map_err(|_| "the vote journal's writer has stopped".to_string())?
    }

    /// Drops the vote under `key` (its replica was removed). Not waited for: a key is never
    /// reused by another replica, so a forget lost in a crash only leaves a stale record.
    pub fn forget(&self, key: &str) {
        let save = Save {
            key: key.to_string(),
            vote: None,
            done: None,
        };
        if self.tx.try_send(save).is_err() {
            warn!(
                key,
                "vote journal queue full: a removed replica's vote stays until the next compaction"
            );
        }
    }
}

struct Writer {
    path: PathBuf,
    file: std::fs::File,
    /// Length of the journal's valid prefix.
    len: u64,
    votes: Arc<Mutex<HashMap<String, Vote>>>,
    /// Each key's newest record's size: what a compacted journal would hold, kept as saves
    /// land so that deciding to compact costs nothing.
    live: HashMap<String, u64>,
    live_bytes: u64,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Save>) {
        while let Some(first) = rx.blocking_recv() {
            let mut round = vec![first];
            while round.len() < ROUND_MAX {
                match rx.try_recv() {
                    Ok(s) => round.push(s),
                    Err(_) => break,
                }
            }
            let result = self.write_waiting_for_space(&round).map_err(|e| e.to_string());
            if let Err(e) = &result {
                error!(path = %self.path.display(), error = %e, "could not save votes");
            }
            for s in round {
                if let Some(done) = s.done {
                    let _ = done.send(result.clone());
                }
            }
            if result.is_ok() {
                if let Err(e) = self.maybe_compact() {
                    warn!(path = %self.path.display(), error = %e, "could not compact the vote journal");
                }
            }
        }
    }

    /// [`Writer::write`], waiting out a full disk as the logs' appends do: a vote that
    /// cannot be saved stops its group's Raft core, so the saves wait (and their groups
    /// neither vote nor campaign) until space is freed. Any other failure is returned.
    fn write_waiting_for_space(&mut self, round: &[Save]) -> io::Result<()> {
        let mut backoff = std::time::Duration::from_millis(10);
        let mut warned = false;
        loop {
            match self.write(round) {
                Err(e) if e.raw_os_error() == Some(28) || e.kind() == io::ErrorKind::StorageFull => {
                    if !warned {
                        warn!(path = %self.path.display(), "disk full: vote saves wait until space is freed");
                        warned = true;
                    }
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(std::time::Duration::from_secs(1));
                }
                Err(e) => return Err(e),
                Ok(()) => {
                    if warned {
                        warn!(path = %self.path.display(), "disk space freed: vote saves resume");
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Appends a round of saves and fsyncs once. A failed round is cut back off the file,
    /// so the journal never holds half of one before the next.
    fn write(&mut self, round: &[Save]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(round.len() * 96);
        let mut sizes = Vec::with_capacity(round.len());
        for s in round {
            let before = buf.len();
            encode(
                &Record {
                    k: s.key.clone(),
                    v: s.vote,
                },
                &mut buf,
            )?;
            sizes.push((buf.len() - before) as u64);
        }
        let r = keel_log::fault::write()
            .and_then(|()| self.file.write_all(&buf))
            .and_then(|()| sync(&self.file));
        if let Err(e) = r {
            self.file.set_len(self.len)?;
            return Err(e);
        }
        self.len += buf.len() as u64;
        keel_log::fault::synced(&self.path, self.len);
        let mut votes = self.votes.lock().unwrap_or_else(|e| e.into_inner());
        for (s, size) in round.iter().zip(sizes) {
            let (old, new) = match s.vote {
                Some(v) => {
                    votes.insert(s.key.clone(), v);
                    (self.live.insert(s.key.clone(), size), size)
                }
                None => {
                    votes.remove(&s.key);
                    (self.live.remove(&s.key), 0)
                }
            };
            self.live_bytes = self.live_bytes - old.unwrap_or(0) + new;
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> io::Result<()> {
        if self.len < COMPACT_MIN_BYTES || self.live_bytes.saturating_mul(4) > self.len {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(self.live_bytes as usize);
        {
            let votes = self.votes.lock().unwrap_or_else(|e| e.into_inner());
            for (k, v) in votes.iter() {
                encode(
                    &Record {
                        k: k.clone(),
                        v: Some(*v),
                    },
                    &mut buf,
                )?;
            }
        }
        let tmp = self.path.with_extension("compact");
        {
            let mut f = std::fs::File::create(&tmp)?;
            keel_log::fault::created(&tmp);
            f.write_all(&buf)?;
            sync(&f)?;
            keel_log::fault::synced(&tmp, buf.len() as u64);
        }
        std::fs::rename(&tmp, &self.path)?;
        keel_log::fault::renamed(&tmp, &self.path);
        sync_dir(&self.path)?;
        self.file = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        info!(path = %self.path.display(), from = self.len, to = buf.len(), "vote journal compacted");
        self.len = buf.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn vote(term: u64, node: u64) -> Vote {
        Vote::new(term, node)
    }

    /// Saves survive a reopen, the last save of a key wins, and a forgotten key is gone.
    #[tokio::test]
    async fn saves_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("votes");
        {
            let s = VoteStore::open(&path).unwrap();
            s.save("a", vote(1, 1)).await.unwrap();
            s.save("b", vote(2, 2)).await.unwrap();
            s.save("a", vote(3, 2)).await.unwrap();
            s.forget("b");
            s.save("c", vote(4, 3)).await.unwrap();
        }
        let s = VoteStore::open(&path).unwrap();
        assert_eq!(s.get("a"), Some(vote(3, 2)));
        assert_eq!(s.get("b"), None);
        assert_eq!(s.get("c"), Some(vote(4, 3)));
    }

    /// Many saves asked for at once all complete, and share fsyncs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_saves_all_land() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("votes");
        let s = VoteStore::open(&path).unwrap();
        let mut tasks = Vec::new();
        for i in 0..2000u64 {
            let s = s.clone();
            tasks.push(tokio::spawn(
                async move { s.save(&format!("g{i}"), vote(i, i % 3)).await },
            ));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        drop(s);
        let s = VoteStore::open(&path).unwrap();
        assert_eq!(s.len(), 2000);
        assert_eq!(s.get("g1234"), Some(vote(1234, 1234 % 3)));
    }

    /// A torn last record is cut away at open; the votes before it stay.
    #[tokio::test]
    async fn torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("votes");
        {
            let s = VoteStore::open(&path).unwrap();
            s.save("a", vote(1, 1)).await.unwrap();
            s.save("b", vote(2, 2)).await.unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let s = VoteStore::open(&path).unwrap();
        assert_eq!(s.get("a"), Some(vote(1, 1)));
        assert_eq!(s.get("b"), None);
        // The journal takes new saves after the cut, and they replay.
        s.save("c", vote(5, 1)).await.unwrap();
        drop(s);
        let s = VoteStore::open(&path).unwrap();
        assert_eq!(s.get("c"), Some(vote(5, 1)));
    }

    /// A flipped byte in a record with good records after it fails the open: the node
    /// must not run having forgotten a vote it cast.
    #[tokio::test]
    async fn damage_before_good_records_fails_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("votes");
        {
            let s = VoteStore::open(&path).unwrap();
            s.save("a", vote(1, 1)).await.unwrap();
            s.save("b", vote(2, 2)).await.unwrap();
        }
        let mut data = std::fs::read(&path).unwrap();
        data[HEADER + 2] ^= 0x40;
        std::fs::write(&path, &data).unwrap();
        let err = VoteStore::open(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }

    /// A journal grown past the compaction size is rewritten with one record per key and
    /// keeps every key's latest vote.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_keeps_the_latest_votes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("votes");
        let s = VoteStore::open(&path).unwrap();
        let mut compacted_at = None;
        for round in 1..=40u64 {
            let before = std::fs::metadata(&path).unwrap().len();
            let saves: Vec<_> = (0..1000u64)
                .map(|i| {
                    let s = s.clone();
                    tokio::spawn(async move { s.save(&format!("replica-{i}"), vote(round, i % 3)).await })
                })
                .collect();
            for t in saves {
                t.await.unwrap().unwrap();
            }
            if std::fs::metadata(&path).unwrap().len() < before {
                compacted_at = Some(round);
                break;
            }
        }
        let round = compacted_at.expect("the journal was never compacted");
        assert!(std::fs::metadata(&path).unwrap().len() < COMPACT_MIN_BYTES / 4);
        drop(s);
        let s = VoteStore::open(&path).unwrap();
        assert_eq!(s.len(), 1000);
        for i in [0u64, 499, 999] {
            assert_eq!(s.get(&format!("replica-{i}")), Some(vote(round, i % 3)));
        }
    }
}

//! The log contract in memory, for tests and deterministic simulation.

use std::collections::VecDeque;

use crate::entry::Entry;
use crate::{LogConfig, LogError, LogStore, SyncHandle};

/// Entries in a deque; "segments" are modelled by `segment_entries` for purge and retention.
pub struct MemLog {
    entries: VecDeque<Entry>,
    first_index: u64,
    start_offset: i64,
    next_offset: i64,
    config: LogConfig,
    poisoned: Option<String>,
}

impl MemLog {
    pub fn new(config: LogConfig) -> MemLog {
        MemLog {
            entries: VecDeque::new(),
            first_index: 0,
            start_offset: 0,
            next_offset: 0,
            config,
            poisoned: None,
        }
    }

    fn check_writable(&self) -> Result<(), LogError> {
        match &self.poisoned {
            Some(r) => Err(LogError::Poisoned(r.clone())),
            None => Ok(()),
        }
    }

    fn pos(&self, index: u64) -> usize {
        (index - self.first_index) as usize
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.first_index = e.index + 1;
        self.start_offset = e.next_offset();
        Some(e)
    }
}

impl LogStore for MemLog {
    fn append(&mut self, entry: &Entry) -> Result<(), LogError> {
        self.check_writable()?;
        if entry.index != self.next_index() {
            return Err(LogError::NonContiguous {
                expected: self.next_index(),
                got: entry.index,
            });
        }
        if entry.offset < self.next_offset {
            return Err(LogError::OffsetRegression {
                expected: self.next_offset,
                got: entry.offset,
            });
        }
        if self.entries.is_empty() {
            self.start_offset = entry.offset;
        }
        self.next_offset = entry.next_offset();
        self.entries.push_back(entry.clone());
        Ok(())
    }

    fn read(&self, from_index: u64, max_bytes: usize) -> Result<Vec<Entry>, LogError> {
        if from_index >= self.next_index() {
            return Ok(Vec::new());
        }
        if from_index < self.first_index {
            return Err(LogError::OutOfRange(from_index));
        }
        Ok(take_budget(self.entries.range(self.pos(from_index)..), max_bytes))
    }

    fn read_from_offset(&self, offset: i64, max_bytes: usize) -> Result<Vec<Entry>, LogError> {
        let it = self
            .entries
            .iter()
            .filter(|e| e.offset_count > 0)
            .skip_while(|e| e.next_offset() <= offset);
        Ok(take_budget(it, max_bytes))
    }

    fn entry_for_timestamp(&self, ts: i64) -> Result<Option<Entry>, LogError> {
        Ok(self
            .entries
            .iter()
            .find(|e| e.offset_count > 0 && e.max_timestamp >= ts)
            .cloned())
    }

    fn truncate_after(&mut self, index: u64) -> Result<(), LogError> {
        self.check_writable()?;
        while self.entries.back().map(|e| e.index > index).unwrap_or(false) {
            if let Some(e) = self.entries.pop_back() {
                self.next_offset = e.offset;
            }
        }
        Ok(())
    }

    fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    fn reset(&mut self, next_index: u64, next_offset: i64) -> Result<(), LogError> {
        self.check_writable()?;
        self.entries.clear();
        self.first_index = next_index;
        self.start_offset = next_offset;
        self.next_offset = next_offset;
        Ok(())
    }

    fn purge_before(&mut self, index: u64) -> Result<u64, LogError> {
        let mut removed = 0;
        while self.entries.front().map(|e| e.index < index).unwrap_or(false) && self.entries.len() > 1 {
            self.pop_front();
            removed += 1;
        }
        Ok(removed)
    }

    fn sync(&mut self) -> Result<(), LogError> {
        self.check_writable()
    }

    fn sync_handle(&self) -> Result<SyncHandle, LogError> {
        self.check_writable()?;
        Ok(SyncHandle {
            file: None,
            next_index: self.next_index(),
            durable: None,
        })
    }

    fn poison(&mut self, reason: String) {
        self.poisoned.get_or_insert(reason);
    }

    fn apply_retention(&mut self, now_ms: i64) -> Result<u64, LogError> {
        let mut removed = 0;
        if let Some(ms) = self.config.retention_ms {
            while self.entries.len() > 1
                && self
                    .entries
                    .front()
                    .map(|e| e.max_timestamp >= 0 && now_ms.saturating_sub(e.max_timestamp) as u64 > ms)
                    .unwrap_or(false)
            {
                self.pop_front();
                removed += 1;
            }
        }
        if let Some(limit) = self.config.retention_bytes {
            while self.entries.len() > 1
                && self
                    .size_bytes()
                    .saturating_sub(self.entries.front().map(|e| e.encoded_len() as u64).unwrap_or(0))
                    >= limit
            {
                self.pop_front();
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn first_index(&self) -> u64 {
        self.first_index
    }

    fn next_index(&self) -> u64 {
        self.first_index + self.entries.len() as u64
    }

    fn start_offset(&self) -> i64 {
        self.entries.front().map(|e| e.offset).unwrap_or(self.next_offset)
    }

    fn next_offset(&self) -> i64 {
        self.next_offset
    }

    fn size_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.encoded_len() as u64).sum()
    }

    fn last_term(&self) -> Option<u64> {
        self.entries.back().map(|e| e.term)
    }
}

/// The first entry always, then more while their payloads fit in `max_bytes`.
fn take_budget<'a>(it: impl Iterator<Item = &'a Entry>, max_bytes: usize) -> Vec<Entry> {
    let mut budget = max_bytes.max(1);
    let mut out = Vec::new();
    for e in it {
        if !out.is_empty() && e.payload.len() > budget {
            break;
        }
        budget = budget.saturating_sub(e.payload.len());
        out.push(e.clone());
        if budget == 0 {
            break;
        }
    }
    out
}

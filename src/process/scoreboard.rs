//! The scoreboard: counters every worker process updates and any of them
//! reads to answer the status page, in one shared anonymous mapping made
//! before the workers are forked (PHP-FPM keeps its scoreboard the same
//! way). Plain atomics only — no locks across processes; a request's URI is
//! written under a per-slot sequence counter and read consistently.

use std::num::NonZeroUsize;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicPtr, AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::recycle::Recycle;

/// Worker slots (a master never runs more workers than this).
pub const SLOTS: usize = 256;
const URI: usize = 192;
/// App threads of a worker whose requests the master can see (more are
/// served, not watched by the master).
pub const THREAD_SLOTS: usize = 64;
const THREAD_URI: usize = 128;

/// A request line, written under a sequence counter and read consistently.
#[repr(C)]
struct Text<const N: usize> {
    seq: AtomicU32,
    len: AtomicU32,
    bytes: [AtomicU8; N],
}

impl<const N: usize> Text<N> {
    fn write(&self, line: &[u8]) {
        let len = line.len().min(N);
        self.seq.fetch_add(1, Ordering::AcqRel); // odd: writing
        for (cell, &byte) in self.bytes.iter().zip(&line[..len]) {
            cell.store(byte, Ordering::Relaxed);
        }
        self.len.store(len as u32, Ordering::Relaxed);
        self.seq.fetch_add(1, Ordering::Release); // even: done
    }

    fn clear(&self) {
        self.len.store(0, Ordering::Relaxed);
    }

    /// The line, read consistently (a few retries).
    fn read(&self) -> String {
        for _ in 0..100 {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let len = (self.len.load(Ordering::Relaxed) as usize).min(N);
            let bytes: Vec<u8> = self.bytes[..len]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
            if self.seq.load(Ordering::Acquire) == before {
                return String::from_utf8_lossy(&bytes).into_owned();
            }
        }
        String::new()
    }
}

/// What one app thread of a worker runs, for the master (which enforces
/// `--request-timeout` from here when the worker itself cannot).
#[repr(C)]
pub struct ThreadRow {
    /// Start of its request (µs since the epoch); 0: idle.
    pub started: AtomicU64,
    line: Text<THREAD_URI>,
}

impl ThreadRow {
    /// "METHOD URI" of its request.
    pub fn line(&self) -> String {
        self.line.read()
    }
}

/// One worker's row.
#[repr(C)]
pub struct Slot {
    /// 0: free.
    pub pid: AtomicU32,
    /// Requests in flight.
    pub running: AtomicU32,
    /// When the worker started (µs since the epoch).
    pub started: AtomicU64,
    /// Requests served.
    pub requests: AtomicU64,
    /// Start of its latest request (µs since the epoch).
    pub request_start: AtomicU64,
    /// Duration of its last finished request (µs).
    pub last_duration: AtomicU64,
    /// Its app threads waiting for a connection on the listening sockets
    /// right now, not stepped aside (see `parking::Waiter::handed_off`): a
    /// paused thread of another worker leaves waiting connections to them.
    pub waiting: AtomicU32,
    /// Non-zero once an app thread of it waits on the listening sockets
    /// (its app is imported): before, the status page says "Starting".
    pub accepting: AtomicU8,
    uri: Text<URI>,
    /// Its app threads (the first [`THREAD_SLOTS`]).
    pub threads: [ThreadRow; THREAD_SLOTS],
}

/// The whole board.
#[repr(C)]
pub struct Board {
    /// Pool start (µs since the epoch).
    pub start_time: AtomicU64,
    /// Requests accepted by all workers (PHP-FPM's `accepted conn`, which
    /// counts requests: one per connection there).
    pub accepted: AtomicU64,
    /// Requests that crossed `--slow-request-log`.
    pub slow_requests: AtomicU64,
    /// Requests that overran `--request-timeout`.
    pub timeouts: AtomicU64,
    /// Recycled workers by cause (`Recycle::ALL` order).
    pub recycles: [AtomicU64; Recycle::ALL.len()],
    /// Most workers ever busy at once.
    pub max_active: AtomicU64,
    /// Longest accept queue seen by the status page.
    pub max_listen_queue: AtomicU64,
    /// The master's `--pm` ([`super::master::pm::Pm::code`]).
    pub pm: AtomicU8,
    /// Times connections waited with `--max-workers` busy (PHP-FPM's
    /// `max children reached`).
    pub max_children_reached: AtomicU64,
    /// Slots claimed so far, counted from the first: the rows past it
    /// were never used (a scan stops there).
    pub claimed: AtomicU32,
    /// The workers.
    pub slots: [Slot; SLOTS],
}

/// The board of this process's pool (a worker's, set after the fork).
static BOARD: AtomicPtr<Board> = AtomicPtr::new(std::ptr::null_mut());
static MY_SLOT: OnceLock<usize> = OnceLock::new();

/// Microseconds since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Map a new board (shared with every process forked afterwards): one per
/// pool. [`install`] makes it the one [`board`] answers.
pub fn create() -> std::io::Result<&'static Board> {
    use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
    let size = NonZeroUsize::new(std::mem::size_of::<Board>()).expect("non-empty");
    // SAFETY: a fresh anonymous mapping, zero-filled, is a valid `Board`
    // (all atomics, zero = empty); it is never unmapped, so `'static` holds,
    // and MAP_SHARED keeps it shared with children forked later.
    let board = unsafe {
        let ptr = mmap_anonymous(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )?;
        &*ptr.as_ptr().cast::<Board>()
    };
    board.start_time.store(now_us(), Ordering::Relaxed);
    Ok(board)
}

/// This process's board from now on (a worker: its pool's).
pub fn install(board: &'static Board) {
    BOARD.store(std::ptr::from_ref(board).cast_mut(), Ordering::Release);
}

/// The board, if this process has one.
pub fn board() -> Option<&'static Board> {
    let ptr = BOARD.load(Ordering::Acquire);
    // SAFETY: only `install` stores here, from a `&'static Board`.
    unsafe { ptr.as_ref() }
}

/// This process's slot index, if it is a worker with one.
pub fn my_index() -> Option<usize> {
    MY_SLOT.get().copied()
}

/// This process's slot, if it is a worker with one.
pub fn my_slot() -> Option<&'static Slot> {
    Some(&board()?.slots[*MY_SLOT.get()?])
}

impl Board {
    /// A free slot for a new worker (`None`: all taken).
    pub fn claim(&self, pid: u32) -> Option<usize> {
        let index = self.slots.iter().position(|s| {
            s.pid
                .compare_exchange(0, pid, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        })?;
        let slot = &self.slots[index];
        slot.running.store(0, Ordering::Relaxed);
        slot.requests.store(0, Ordering::Relaxed);
        slot.request_start.store(0, Ordering::Relaxed);
        slot.last_duration.store(0, Ordering::Relaxed);
        slot.waiting.store(0, Ordering::Relaxed);
        slot.accepting.store(0, Ordering::Relaxed);
        slot.uri.clear();
        for thread in &slot.threads {
            thread.started.store(0, Ordering::Relaxed);
        }
        slot.started.store(now_us(), Ordering::Relaxed);
        self.claimed.fetch_max(index as u32 + 1, Ordering::AcqRel);
        Some(index)
    }

    /// The rows ever claimed (workers live or gone): what a scan needs to
    /// look at, not all [`SLOTS`] (each row is some 9 KiB: a page apiece).
    pub fn used(&self) -> &[Slot] {
        let n = (self.claimed.load(Ordering::Acquire) as usize).min(SLOTS);
        &self.slots[..n]
    }

    /// Whether an app thread of a live worker other than slot `me` waits
    /// for a connection, not stepped aside.
    pub fn others_waiting(&self, me: usize) -> bool {
        self.used().iter().enumerate().any(|(i, s)| {
            i != me && s.waiting.load(Ordering::Acquire) > 0 && s.pid.load(Ordering::Relaxed) != 0
        })
    }

    /// The row of worker `pid`.
    pub fn slot_of(&self, pid: u32) -> Option<&Slot> {
        self.slots
            .iter()
            .find(|s| s.pid.load(Ordering::Acquire) == pid)
    }

    /// The worker `pid` is gone.
    pub fn release(&self, pid: u32) {
        for slot in &self.slots {
            let _ = slot
                .pid
                .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// In the worker, after the fork: this is our slot.
pub fn adopt(index: usize) {
    let _ = MY_SLOT.set(index);
}

impl Slot {
    /// App thread `thread` starts a request: `line` is "METHOD URI".
    pub fn begin(&self, thread: usize, line: &[u8]) {
        let now = now_us();
        self.running.fetch_add(1, Ordering::AcqRel);
        self.request_start.store(now, Ordering::Relaxed);
        self.uri.write(line);
        if let Some(row) = self.threads.get(thread) {
            row.line.write(line);
            row.started.store(now.max(1), Ordering::Release);
        }
    }

    /// App thread `thread`'s request ends.
    pub fn end(&self, thread: usize) {
        if let Some(row) = self.threads.get(thread) {
            row.started.store(0, Ordering::Release);
        }
        let start = self.request_start.load(Ordering::Relaxed);
        self.last_duration
            .store(now_us().saturating_sub(start), Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.running.fetch_sub(1, Ordering::AcqRel);
    }

    /// The latest request line, read consistently (a few retries).
    pub fn line(&self) -> String {
        self.uri.read()
    }

    /// The app thread whose request has run longest, if one runs: (thread,
    /// µs it has run).
    pub fn longest_running(&self) -> Option<(usize, u64)> {
        let now = now_us();
        self.threads
            .iter()
            .enumerate()
            .filter_map(|(i, row)| {
                let started = row.started.load(Ordering::Acquire);
                (started != 0).then(|| (i, now.saturating_sub(started)))
            })
            .max_by_key(|&(_, ran)| ran)
    }
}

//! Why and when a worker is replaced while it is healthy: the causes
//! (`--max-requests`, `--max-lifetime`, `--max-rss`, `--request-timeout`),
//! the jitter that keeps workers from recycling together, and the memory
//! sample behind `--max-rss`.

use nix::unistd::Pid;

/// Why a worker is recycled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recycle {
    /// It served `--max-requests` (it says so on its pipe).
    MaxRequests,
    /// `--max-lifetime`.
    MaxLifetime,
    /// `--max-rss`.
    MaxRss,
    /// A request overran `--request-timeout`.
    RequestTimeout,
}

impl Recycle {
    /// Every cause, in the scoreboard's counter order.
    pub const ALL: [Recycle; 4] = [
        Recycle::MaxRequests,
        Recycle::MaxLifetime,
        Recycle::MaxRss,
        Recycle::RequestTimeout,
    ];

    /// The flag's name, as logs and the status page show it.
    pub fn name(self) -> &'static str {
        match self {
            Recycle::MaxRequests => "max-requests",
            Recycle::MaxLifetime => "max-lifetime",
            Recycle::MaxRss => "max-rss",
            Recycle::RequestTimeout => "request-timeout",
        }
    }
}

/// A small random number generator for jitter (xorshift, seeded from the
/// clock and the pid): no cryptographic use.
pub fn jitter(bound: u64) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    if bound == 0 {
        return 0;
    }
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64);
        x = nanos ^ (u64::from(std::process::id()) << 32) | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x % (bound + 1)
}

/// A process's resident set size, from /proc/PID/statm.
pub fn resident_bytes(pid: Pid) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??;
    Some(pages * page as u64)
}

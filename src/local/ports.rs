//! Loopback ports for the sidecars that `leasehold local`, the tests, the
//! fault harness and the benchmarks start on one machine.
//!
//! A port is checked free by binding it, then handed to a child that binds
//! it a moment later, and perhaps again after a kill and a restart. Between
//! those binds another process on the machine could take the same port and
//! one of the two sidecars would exit on "Address already in use". So ports
//! come from blocks, and a process holds each block it hands ports from with
//! an advisory lock (`flock`) on a file named after the block in
//! `$TMPDIR/leasehold-ports/`, for as long as it lives. The kernel drops the
//! lock when the process ends, however it ends, so nothing goes stale.
//!
//! Owns: the blocks this process holds. Must not: hand out a port of a block
//! another process holds, or one in Linux's ephemeral range (32768 and up),
//! which an outgoing connection could be given between the check and the bind.

use std::fs::File;
use std::sync::Mutex;

const LOW: u32 = 20_000;
const SPAN: u32 = 12_000;
const BLOCK: u32 = 50;

struct Held {
    /// The open lock files; dropping one would release its block.
    _locks: Vec<File>,
    /// The block ports are handed from now, and how many it has given.
    current: Option<(u32, u32)>,
    /// Where the search for the next free block starts.
    cursor: u32,
}

static HELD: Mutex<Option<Held>> = Mutex::new(None);

/// A loopback port free now that no other process on this machine hands
/// out while this one lives.
pub fn free_port() -> std::io::Result<u16> {
    let mut guard = HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let held = guard.get_or_insert_with(|| Held { _locks: Vec::new(), current: None, cursor: first_block() });
    for _ in 0..=SPAN {
        if let Some((first, given)) = held.current {
            if given < BLOCK {
                held.current = Some((first, given + 1));
                let port = u16::try_from(first + given).unwrap_or(u16::MAX);
                if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                    return Ok(port);
                }
                continue;
            }
        }
        match claim_block(held) {
            Some(first) => held.current = Some((first, 0)),
            None => break,
        }
    }
    // Every block is held (or the lock directory cannot be written): a port
    // the kernel picks, which is free now but not reserved.
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Which block this process tries first: different between processes, so
/// that they rarely even try the same lock.
fn first_block() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (std::process::id().wrapping_mul(7919) ^ nanos) % (SPAN / BLOCK)
}

/// Locks the next block no other process holds, and returns its first port.
fn claim_block(held: &mut Held) -> Option<u32> {
    let dir = std::env::temp_dir().join("leasehold-ports");
    std::fs::create_dir_all(&dir).ok()?;
    let blocks = SPAN / BLOCK;
    for _ in 0..blocks {
        let first = LOW + held.cursor * BLOCK;
        held.cursor = (held.cursor + 1) % blocks;
        let Ok(file) =
            std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(first.to_string()))
        else {
            continue;
        };
        use std::os::fd::AsRawFd;
        // SAFETY: flock only takes a lock on the descriptor, which `file` owns
        // and keeps open for as long as the lock must hold.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            held._locks.push(file);
            return Some(first);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_below_the_ephemeral_range_and_their_block_is_locked() {
        let ports: Vec<u16> = (0..2 * BLOCK).map(|_| free_port().expect("a port")).collect();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ports.len(), "a port handed out twice: {ports:?}");
        assert!(ports.iter().all(|&p| (LOW..LOW + SPAN).contains(&u32::from(p))), "{ports:?}");
        // Another open file description cannot take the lock of a block held.
        let first = LOW + (u32::from(ports[0]) - LOW) / BLOCK * BLOCK;
        let path = std::env::temp_dir().join("leasehold-ports").join(first.to_string());
        let other = File::open(&path).expect("the block's lock file");
        use std::os::fd::AsRawFd;
        // SAFETY: as in claim_block.
        let rc = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, -1, "the block of port {} is not held", ports[0]);
    }
}

//! The one clock the protocol reads: CLOCK_BOOTTIME, which keeps counting
//! while the machine is suspended (CLOCK_MONOTONIC does not, and a lease
//! must never survive a suspend). The API reports lease deadlines on it, so
//! an application in the same pod can check a cached deadline on its own.

use crate::core::Nanos;

/// Now, on CLOCK_BOOTTIME.
pub fn boottime_now() -> Nanos {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime only writes the timespec we pass it.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    assert!(rc == 0, "clock_gettime(CLOCK_BOOTTIME) failed: the kernel is older than 2.6.39");
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    Nanos(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boottime_moves_forward() {
        let a = boottime_now();
        let b = boottime_now();
        assert!(a.0 > 0 && b >= a);
    }
}

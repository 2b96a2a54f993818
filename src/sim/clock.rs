//! A simulated clock: local time runs at a constant rate that differs from
//! true time by a bounded amount, from a random offset. It keeps running
//! while its process is paused or crashed, like a real machine's clock.

use crate::core::Nanos;

const PPM: i128 = 1_000_000;

#[derive(Clone, Debug)]
pub struct Clock {
    offset_ns: u64,
    /// Rate difference from true time, in parts per million (may be negative).
    drift_ppm: i64,
}

impl Clock {
    pub fn new(offset_ns: u64, drift_ppm: i64) -> Self {
        assert!(drift_ppm > -1_000_000, "a clock must move forwards");
        Clock { offset_ns, drift_ppm }
    }

    pub fn drift_ppm(&self) -> i64 {
        self.drift_ppm
    }

    /// Local reading at true time `t`.
    pub fn local(&self, t: u64) -> Nanos {
        let scaled = i128::from(t) * (PPM + i128::from(self.drift_ppm)) / PPM;
        Nanos(self.offset_ns + u64::try_from(scaled).unwrap_or(u64::MAX))
    }

    /// The earliest true time at which the local clock reads `local` or more.
    pub fn to_true(&self, local: Nanos) -> u64 {
        if local == Nanos::NEVER {
            return u64::MAX;
        }
        let Some(rel) = local.0.checked_sub(self.offset_ns) else {
            return 0;
        };
        let rate = PPM + i128::from(self.drift_ppm);
        let mut t = u64::try_from(i128::from(rel) * PPM / rate).unwrap_or(u64::MAX);
        // Integer division may land a nanosecond or two early: step forward.
        while self.local(t) < local {
            t += 1;
        }
        while t > 0 && self.local(t - 1) >= local {
            t -= 1;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn to_true_inverts_local_for_fast_and_slow_clocks() {
        for drift in [-200_000, -10_000, 0, 10_000, 200_000] {
            let c = Clock::new(12_345, drift);
            for t in [0u64, 1, 999, 1_000_000, 2_000_000_007] {
                let l = c.local(t);
                let back = c.to_true(l);
                assert!(back <= t && c.local(back) == l, "drift {drift} t {t}");
            }
        }
    }
}

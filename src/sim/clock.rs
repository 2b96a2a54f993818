//! A simulated clock: local time is a continuous, strictly increasing,
//! piecewise-linear function of true time. Each piece runs at a rate that
//! differs from true time by a bounded amount; the rate may change at any
//! moment (never in the past). The clock keeps running while its process is
//! paused or crashed, like a real machine's clock.

use crate::core::Nanos;

const PPM: i128 = 1_000_000;

#[derive(Clone, Copy, Debug)]
struct Piece {
    start_true: u64,
    start_local: u64,
    /// Rate difference from true time, in parts per million (may be negative).
    drift_ppm: i64,
}

impl Piece {
    fn local(&self, t: u64) -> u64 {
        let dt = i128::from(t - self.start_true);
        let scaled = dt * (PPM + i128::from(self.drift_ppm)) / PPM;
        self.start_local + u64::try_from(scaled).unwrap_or(u64::MAX)
    }
}

#[derive(Clone, Debug)]
pub struct Clock {
    pieces: Vec<Piece>,
}

impl Clock {
    pub fn new(offset_ns: u64, drift_ppm: i64) -> Self {
        assert!(drift_ppm > -1_000_000, "a clock must move forwards");
        Clock { pieces: vec![Piece { start_true: 0, start_local: offset_ns, drift_ppm }] }
    }

    /// The current rate difference, in ppm.
    pub fn drift_ppm(&self) -> i64 {
        self.last().drift_ppm
    }

    fn last(&self) -> &Piece {
        self.pieces.last().expect("a clock always has a piece")
    }

    /// From true time `now` on, run at `drift_ppm`.
    pub fn set_rate(&mut self, now: u64, drift_ppm: i64) {
        assert!(drift_ppm > -1_000_000, "a clock must move forwards");
        let last = *self.last();
        assert!(now >= last.start_true, "a clock's rate cannot change in the past");
        self.pieces.push(Piece { start_true: now, start_local: last.local(now), drift_ppm });
    }

    fn piece_at_true(&self, t: u64) -> &Piece {
        let i = self.pieces.partition_point(|p| p.start_true <= t);
        &self.pieces[i.saturating_sub(1)]
    }

    /// Local reading at true time `t`.
    pub fn local(&self, t: u64) -> Nanos {
        Nanos(self.piece_at_true(t).local(t))
    }

    /// The earliest true time at which the local clock reads `local` or more,
    /// assuming the current rate holds from now on.
    pub fn to_true(&self, local: Nanos) -> u64 {
        if local == Nanos::NEVER {
            return u64::MAX;
        }
        let i = self.pieces.partition_point(|p| p.start_local <= local.0);
        if i == 0 {
            return 0;
        }
        let p = self.pieces[i - 1];
        let rel = i128::from(local.0 - p.start_local);
        let rate = PPM + i128::from(p.drift_ppm);
        let mut t = p.start_true.saturating_add(u64::try_from(rel * PPM / rate).unwrap_or(u64::MAX));
        // Integer division may land a nanosecond or two off: step to the
        // exact earliest instant.
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

    #[test]
    fn a_rate_change_keeps_the_clock_continuous_and_invertible() {
        let mut c = Clock::new(500, 10_000);
        c.set_rate(1_000_000, -10_000);
        c.set_rate(3_000_000, 0);
        let mut prev = c.local(0);
        for t in (0..5_000_000u64).step_by(997) {
            let l = c.local(t);
            assert!(l >= prev, "monotonic at {t}");
            prev = l;
            let back = c.to_true(l);
            assert!(back <= t && c.local(back) == l, "t {t}");
        }
        // 1ms at +1%, then 2ms at -1%, then 1ms exact.
        assert_eq!(c.local(4_000_000), Nanos(500 + 1_010_000 + 1_980_000 + 1_000_000));
    }
}

//! Lease arithmetic under the clock-drift bound. Everything that turns a
//! configured duration into a lease or promise length lives here, next to the
//! argument that makes it safe.
//!
//! Safety: DESIGN §2 rule 3. Every clock runs at a rate within `[1-rho, 1+rho]`
//! of real time. A voter that acks round r (sent by the leader at real time S)
//! promises for `lease_ttl` of its own clock from a moment at or after S, which
//! is at least `lease_ttl / (1+rho)` real time. The leader holds its lease for
//! `lease_ttl * (1-rho)/(1+rho)` of *its* clock from its send time s_r, which
//! is at most `lease_ttl / (1+rho)` real time. So the leader's lease is over
//! before any voter of the acking majority can vote for someone else, and any
//! majority that elects a successor contains such a voter.

use std::time::Duration;

/// One million: drift is held as parts per million so that the arithmetic is
/// exact integer arithmetic (no float rounding can lengthen a lease).
pub const PPM: u64 = 1_000_000;

/// Converts a drift bound given as a fraction (0.01 = 1%) into parts per
/// million, rounding *up* so that the bound used is never weaker than asked.
pub fn drift_ppm(max_clock_drift: f64) -> u64 {
    let ppm = (max_clock_drift * PPM as f64).ceil();
    if ppm <= 0.0 {
        0
    } else {
        ppm as u64
    }
}

/// How long a leader may count on a majority ack of a heartbeat round, on its
/// own clock, measured from the round's send time:
/// `lease_ttl * (1 - rho) / (1 + rho)`, rounded down to the nanosecond.
pub fn leader_lease(lease_ttl: Duration, drift_ppm: u64) -> Duration {
    assert!(drift_ppm < PPM, "clock drift bound must be below 100%");
    let ttl_ns = lease_ttl.as_nanos();
    let num = ttl_ns * u128::from(PPM - drift_ppm);
    let den = u128::from(PPM + drift_ppm);
    let ns = num / den;
    Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX))
}

/// Size of a majority of `voters`.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// The highest heartbeat round that a majority has acknowledged, given the
/// highest round each voter has acknowledged (the leader includes itself with
/// its current round). Rounds only count as acked by voters that reported
/// them, so voters that never answered simply do not appear.
pub fn quorum_round(mut acked_rounds: Vec<u64>, voters: usize) -> Option<u64> {
    let q = quorum(voters);
    if acked_rounds.len() < q {
        return None;
    }
    acked_rounds.sort_unstable_by(|a, b| b.cmp(a));
    Some(acked_rounds[q - 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_lease_applies_the_drift_margin_and_rounds_down() {
        let ttl = Duration::from_secs(2);
        // 2s * 0.99 / 1.01 = 1.960396039...s
        assert_eq!(leader_lease(ttl, 10_000), Duration::from_nanos(1_960_396_039));
        assert_eq!(leader_lease(ttl, 0), ttl);
    }

    #[test]
    fn drift_is_rounded_up_to_whole_ppm() {
        assert_eq!(drift_ppm(0.01), 10_000);
        assert_eq!(drift_ppm(0.0000001), 1);
        assert_eq!(drift_ppm(0.0), 0);
    }

    #[test]
    fn leader_lease_never_exceeds_the_shortest_voter_promise_in_real_time() {
        // Exhaustive over a grid instead of a property framework: for every
        // ttl and drift, the leader's lease measured on a clock running at
        // (1-rho) lasts no longer in real time than a promise of ttl measured
        // on a clock running at (1+rho).
        for ttl_ms in [1u64, 7, 100, 250, 1_000, 2_000, 30_000] {
            for ppm in [0u64, 1, 500, 10_000, 50_000, 200_000, 499_999] {
                let ttl = Duration::from_millis(ttl_ms);
                let lease = leader_lease(ttl, ppm).as_nanos();
                // real(lease on slow clock) = lease / (1-rho)
                // real(promise on fast clock) = ttl / (1+rho)
                // lease/(1-rho) <= ttl/(1+rho)  <=>  lease*(1+rho) <= ttl*(1-rho)
                let lhs = lease * u128::from(PPM + ppm);
                let rhs = ttl.as_nanos() * u128::from(PPM - ppm);
                assert!(lhs <= rhs, "ttl={ttl_ms}ms ppm={ppm}: lease {lease}ns too long");
            }
        }
    }

    /// Naive reference: the highest round r such that at least a majority
    /// of voters acked r or later.
    fn naive_quorum_round(acked: &[u64], voters: usize) -> Option<u64> {
        let need = voters / 2 + 1;
        (0..=10u64).rev().find(|r| acked.iter().filter(|a| **a >= *r).count() >= need)
    }

    #[test]
    fn quorum_round_matches_the_naive_reference_exhaustively() {
        // Every vector of up to `voters` acks with rounds 0..=4, voters 1..=5.
        for voters in 1..=5usize {
            for len in 0..=voters {
                let total = 5u64.pow(len as u32);
                for code in 0..total {
                    let acked: Vec<u64> = (0..len).map(|i| (code / 5u64.pow(i as u32)) % 5).collect();
                    assert_eq!(
                        quorum_round(acked.clone(), voters),
                        naive_quorum_round(&acked, voters),
                        "voters={voters} acked={acked:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn quorum_round_is_the_majority_th_highest_ack() {
        assert_eq!(quorum(1), 1);
        assert_eq!(quorum(3), 2);
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(5), 3);
        assert_eq!(quorum_round(vec![7], 1), Some(7));
        assert_eq!(quorum_round(vec![9, 3], 3), Some(3));
        assert_eq!(quorum_round(vec![9], 3), None);
        assert_eq!(quorum_round(vec![9, 8, 2, 1], 5), Some(2));
        assert_eq!(quorum_round(vec![9, 2, 8], 5), Some(2));
    }
}

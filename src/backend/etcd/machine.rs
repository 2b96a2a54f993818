//! The etcd backend's decisions, as a pure state machine in the style of
//! [`crate::core`]: when this node may report itself leader, with which
//! token, when its local lease lapses, when to campaign again, which tokens
//! it refuses, and what it reports. Time enters as the `now` argument (a
//! CLOCK_BOOTTIME instant); every input returns the [`Effects`] the shell
//! (`super::Backend`) carries out against etcd and the token file.
//!
//! Owns: the phase, this node's lease as etcd granted it, the highest token
//! seen, the leader last observed, the backoff. Must not: talk to etcd, read
//! a clock, or touch a file (the clippy boundary of the core applies here).
#![deny(clippy::disallowed_types, clippy::disallowed_methods)]

use std::time::Duration;

use crate::core::rng::SplitMix64;
use crate::core::{lease, AdminError, AdminRequest, Event, LeaderView, Nanos, NodeId, Role, StepDownReason, Term};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The current leader of the election, as observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Known {
    pub node_id: NodeId,
    pub address: Option<String>,
    pub token: u64,
    /// The etcd lease its key is attached to.
    pub lease: i64,
}

/// Where this node stands in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not in the election (priority 0, unhealthy, or waiting to retry).
    Idle,
    /// Campaigning, or reading back a key before leading with it.
    Campaigning,
    Leading {
        token: u64,
    },
    /// The local lease ran out while leading; the key may still be alive.
    Lapsed {
        token: u64,
    },
}

/// This node's lease at etcd and what it proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: i64,
    /// The TTL etcd granted.
    pub ttl: Duration,
    /// The local lease: this node may report itself leader until then.
    pub valid_until: Nanos,
}

/// What the keep-alive task reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// etcd answered the keep-alive sent at `sent_at` with this TTL; and
    /// whether this lease's election key existed just after.
    Extended { sent_at: Nanos, ttl: Duration, key_present: bool },
    /// etcd says the lease no longer exists.
    Gone,
    /// No answer or an error; the task keeps trying.
    Failing(String),
    /// etcd answered, but the answer could not be shown to come from its
    /// real leader: not credited.
    Unconfirmed(String),
}

/// Something worth a log line, with what the shell needs to say it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Note {
    /// A campaign returned a token not above one seen before.
    TokenRegressed { token: u64, highest: u64 },
    /// The local lease lapsed while leading.
    LeaseLapsed { token: u64 },
    /// etcd renewed the lease after a lapse: the same token again.
    LeadingAgain { token: u64 },
    /// The lease lives, but this node's key is gone.
    KeyGone { token: u64 },
    /// etcd says the lease is gone (while leading, or not).
    LeaseGone { id: i64, token: Option<u64> },
    /// Another, newer key leads the election.
    NewerKeyLeads { token: u64, newer: u64, leader: NodeId },
    /// etcd answers again after failures.
    Answering,
    /// A keep-alive answer that was not credited.
    Unconfirmed(String),
    /// The health check fails: leaving the election.
    Unhealthy,
    /// A request to etcd failed; `first` of an outage (a warning; the rest
    /// are debug lines).
    Failed { what: String, first: bool },
}

/// What the shell must do after an input, in this order.
#[must_use]
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Effects {
    pub notes: Vec<Note>,
    /// For the observer (metrics and the role-change log line).
    pub events: Vec<Event>,
    /// Resign the key this node holds or just won.
    pub resign: bool,
    /// Revoke this lease (without waiting), and stop keeping it alive.
    pub revoke: Option<i64>,
    /// Write a token to the token file (it is above any seen), then call
    /// [`Machine::recorded`].
    pub record: Option<Record>,
    /// Start a campaign with the lease (`Some(false)`), or read back the
    /// key kept from before a lapse (`Some(true)`).
    pub campaign: Option<bool>,
    /// Once the requests above are done, back off before joining again
    /// ([`Machine::back_off`]): a slow resignation must not use up the pause.
    pub backoff: bool,
}

/// A token to write down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub token: u64,
    /// The token of a won campaign, which leads once it is durable; else
    /// one observed in the election.
    pub then_lead: bool,
}

/// What a timer asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Tick {
    Nothing,
    /// Grant a lease, then call [`Machine::granted`].
    Grant,
    /// Carry these out.
    Effects(Effects),
}

#[derive(Debug)]
pub struct Machine {
    node_id: NodeId,
    advertise: String,
    priority: u32,
    drift_ppm: u64,
    phase: Phase,
    lease: Option<Lease>,
    /// The token this node last led with (it may lead with it again after a
    /// lapse, if its lease never expired at etcd).
    last_led: Option<u64>,
    known: Option<Known>,
    healthy: bool,
    /// The highest token seen, as the token file holds it.
    highest: u64,
    /// False after a failed write of the token file.
    storage_ok: bool,
    /// When to try to join the election again, after a failure.
    retry_at: Nanos,
    failures: u32,
    /// etcd's answers are failing; logged once per outage.
    failing: bool,
    rng: SplitMix64,
}

impl Machine {
    /// `highest` is what the token file holds; `healthy` is false until a
    /// configured health check first passes.
    pub fn new(
        node_id: NodeId,
        advertise: String,
        priority: u32,
        max_clock_drift: f64,
        highest: u64,
        healthy: bool,
        seed: u64,
    ) -> Machine {
        Machine {
            node_id,
            advertise,
            priority,
            drift_ppm: lease::drift_ppm(max_clock_drift),
            phase: Phase::Idle,
            lease: None,
            last_led: None,
            known: None,
            healthy,
            highest,
            storage_ok: true,
            retry_at: Nanos::ZERO,
            failures: 0,
            failing: false,
            rng: SplitMix64::new(seed),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn lease(&self) -> Option<Lease> {
        self.lease
    }

    pub fn highest(&self) -> u64 {
        self.highest
    }

    /// When to try to join the election (or reach etcd) again.
    pub fn retry_at(&self) -> Nanos {
        self.retry_at
    }

    fn wants_to_lead(&self) -> bool {
        self.priority > 0 && self.healthy
    }

    fn lease_valid(&self, now: Nanos) -> bool {
        self.lease.is_some_and(|l| now < l.valid_until)
    }

    /// The next instant something must happen without an outside event:
    /// the local lease's end while leading, or the next attempt to join.
    pub fn next_timer(&self) -> Option<Nanos> {
        match (self.phase, self.lease) {
            (Phase::Leading { .. }, Some(l)) => Some(l.valid_until),
            (Phase::Idle, _) if self.wants_to_lead() => Some(self.retry_at),
            _ => None,
        }
    }

    pub fn on_timer(&mut self, now: Nanos) -> Tick {
        if let Phase::Leading { token } = self.phase {
            if self.lease.is_some_and(|l| now >= l.valid_until) {
                self.phase = Phase::Lapsed { token };
                return Tick::Effects(Effects {
                    notes: vec![Note::LeaseLapsed { token }],
                    events: vec![Event::SteppedDown { term: Term(token), reason: StepDownReason::LeaseLapsed }],
                    ..Effects::default()
                });
            }
            return Tick::Nothing;
        }
        if self.phase != Phase::Idle || !self.wants_to_lead() || now < self.retry_at {
            return Tick::Nothing;
        }
        if self.lease.is_none() {
            return Tick::Grant;
        }
        Tick::Effects(self.campaign(false))
    }

    /// etcd granted lease `id` with `ttl`, asked for at `sent_at`: the local
    /// lease counts from the request, not from the answer. Starts the
    /// campaign.
    pub fn granted(&mut self, sent_at: Nanos, id: i64, ttl: Duration) -> Effects {
        let valid_until = sent_at.plus(lease::leader_lease(ttl, self.drift_ppm));
        self.lease = Some(Lease { id, ttl, valid_until });
        self.campaign(false)
    }

    fn campaign(&mut self, resume: bool) -> Effects {
        if self.lease.is_none() {
            return Effects::default();
        }
        self.phase = Phase::Campaigning;
        let events = if resume {
            Vec::new()
        } else {
            vec![Event::ElectionStarted { term: Term(self.highest), transfer: false }]
        };
        Effects { events, campaign: Some(resume), ..Effects::default() }
    }

    /// A request to etcd failed: back off. True for the first failure of an
    /// outage (worth a warning; the rest are debug lines).
    pub fn failed(&mut self, now: Nanos) -> bool {
        let first = !self.failing;
        self.failing = true;
        self.back_off(now);
        first
    }

    /// Waits before joining the election again, longer after each failure
    /// in a row (with jitter).
    pub fn back_off(&mut self, now: Nanos) {
        self.failures = self.failures.saturating_add(1);
        let base = BACKOFF_MIN.saturating_mul(1 << self.failures.min(5)).min(BACKOFF_MAX);
        let jitter = Duration::from_millis(self.rng.below(base.as_millis() as u64 / 2 + 1));
        self.retry_at = now.plus(base + jitter);
    }

    /// The campaign failed (no key, or the key vanished before it was read
    /// back). True for the first failure of an outage.
    pub fn campaign_failed(&mut self, now: Nanos) -> bool {
        self.phase = Phase::Idle;
        self.failed(now)
    }

    /// The campaign returned and its key was read back with `token` (the
    /// key's create revision). A token not above one seen before is refused:
    /// etcd's revisions went back (restored from an older snapshot), unless
    /// it is the token this node led with before a lapse.
    pub fn won(&mut self, now: Nanos, token: u64) -> Effects {
        self.phase = Phase::Idle;
        if token <= self.highest && self.last_led != Some(token) {
            return Effects {
                notes: vec![Note::TokenRegressed { token, highest: self.highest }],
                resign: true,
                backoff: true,
                ..Effects::default()
            };
        }
        if token > self.highest {
            // Leads only once the token is durable: `recorded`.
            self.phase = Phase::Campaigning;
            return Effects { record: Some(Record { token, then_lead: true }), ..Effects::default() };
        }
        self.lead(now, token)
    }

    /// The token file holds `r.token` now (`written`), or its write failed.
    pub fn recorded(&mut self, now: Nanos, r: Record, written: bool) -> Effects {
        let token = r.token;
        self.storage_ok = written;
        if written {
            self.highest = self.highest.max(token);
        }
        if !r.then_lead {
            return Effects::default();
        }
        self.phase = Phase::Idle;
        if !written {
            return Effects { events: vec![Event::StorageFault], resign: true, backoff: true, ..Effects::default() };
        }
        self.lead(now, token)
    }

    fn lead(&mut self, now: Nanos, token: u64) -> Effects {
        self.failures = 0;
        // The key holds this token with this node's lease: after a lapse it
        // may lead with it again.
        let again = self.last_led == Some(token);
        self.last_led = Some(token);
        if !self.lease_valid(now) {
            // The lease lapsed while the campaign returned: wait for etcd
            // to renew it (or to say it is gone).
            self.phase = Phase::Lapsed { token };
            return Effects::default();
        }
        let notes = if again { vec![Note::LeadingAgain { token }] } else { Vec::new() };
        self.phase = Phase::Leading { token };
        Effects { notes, events: vec![Event::ElectionWon { term: Term(token) }], ..Effects::default() }
    }

    /// What the keep-alive task reported.
    pub fn renewal(&mut self, now: Nanos, r: Renewal) -> Effects {
        let Some(lease) = self.lease.as_mut() else { return Effects::default() };
        match r {
            Renewal::Extended { key_present: false, .. } if matches!(self.phase, Phase::Leading { .. }) => {
                // The lease lives but the key is gone: deleted by hand, or
                // its lease revoked and re-granted (an etcd fault). Another
                // candidate may already lead: stop now.
                let Phase::Leading { token } = self.phase else { return Effects::default() };
                let id = lease.id;
                self.phase = Phase::Idle;
                self.lease = None;
                self.retry_at = now;
                Effects {
                    notes: vec![Note::KeyGone { token }],
                    events: vec![Event::SteppedDown { term: Term(token), reason: StepDownReason::HigherTerm }],
                    revoke: Some(id),
                    ..Effects::default()
                }
            }
            Renewal::Extended { sent_at, ttl, .. } => {
                lease.ttl = ttl;
                lease.valid_until = lease.valid_until.max(sent_at.plus(lease::leader_lease(ttl, self.drift_ppm)));
                let mut notes = Vec::new();
                if self.failing {
                    self.failing = false;
                    notes.push(Note::Answering);
                }
                // After a lapse the key never expired: read it back and lead
                // again with the same token.
                let mut e =
                    if let Phase::Lapsed { .. } = self.phase { self.campaign(true) } else { Effects::default() };
                e.notes.splice(0..0, notes);
                e
            }
            Renewal::Failing(what) => {
                let first = self.failed(now);
                Effects {
                    notes: vec![Note::Failed { what: format!("keep-alive: {what}"), first }],
                    ..Effects::default()
                }
            }
            Renewal::Unconfirmed(why) => Effects { notes: vec![Note::Unconfirmed(why)], ..Effects::default() },
            Renewal::Gone => self.lease_gone(now),
        }
    }

    /// etcd says the lease is gone, or the keep-alive task ended.
    pub fn lease_gone(&mut self, now: Nanos) -> Effects {
        let Some(lease) = self.lease.take() else { return Effects::default() };
        let was = std::mem::replace(&mut self.phase, Phase::Idle);
        self.retry_at = now;
        match was {
            Phase::Leading { token } => Effects {
                notes: vec![Note::LeaseGone { id: lease.id, token: Some(token) }],
                events: vec![Event::SteppedDown { term: Term(token), reason: StepDownReason::LeaseLapsed }],
                ..Effects::default()
            },
            _ => Effects { notes: vec![Note::LeaseGone { id: lease.id, token: None }], ..Effects::default() },
        }
    }

    /// The election's leader as observed (None: no leader, or unknown).
    pub fn observed(&mut self, now: Nanos, known: Option<Known>) -> Effects {
        let mut e = Effects::default();
        if let Some(k) = &known {
            let ours = self.lease.is_some_and(|l| l.id == k.lease);
            if !ours && k.token > self.highest {
                e.record = Some(Record { token: k.token, then_lead: false });
            }
            // A newer key leads: this node's key is gone (deleted by hand,
            // or its lease revoked) whatever its local lease says.
            if let Phase::Leading { token } | Phase::Lapsed { token } = self.phase {
                if k.token > token && !ours {
                    e.notes.push(Note::NewerKeyLeads { token, newer: k.token, leader: k.node_id.clone() });
                    e.events.push(Event::SteppedDown { term: Term(token), reason: StepDownReason::HigherTerm });
                    self.phase = Phase::Idle;
                    e.revoke = self.lease.take().map(|l| l.id);
                    self.retry_at = now;
                }
            }
        }
        self.known = known;
        e
    }

    /// The local health check changed.
    pub fn health(&mut self, now: Nanos, healthy: bool) -> Effects {
        self.healthy = healthy;
        if healthy {
            self.retry_at = now;
            return Effects::default();
        }
        if self.phase == Phase::Idle && self.lease.is_none() {
            return Effects::default();
        }
        let mut e = self.withdraw();
        e.notes.insert(0, Note::Unhealthy);
        e
    }

    /// Leaves the election: stops claiming, resigns a key it leads with,
    /// revokes the lease.
    pub fn withdraw(&mut self) -> Effects {
        let was = std::mem::replace(&mut self.phase, Phase::Idle);
        let mut e = Effects { revoke: self.lease.take().map(|l| l.id), ..Effects::default() };
        if let Phase::Leading { token } = was {
            e.events.push(Event::SteppedDown { term: Term(token), reason: StepDownReason::Transferred });
            e.resign = true;
        }
        e
    }

    /// May this node hand over now? Ok with its token if it leads with a
    /// valid lease (a transfer's target is checked against etcd's queue
    /// with [`check_transfer`] once the shell has listed the candidates).
    pub fn may_hand_over(&self, now: Nanos, req: &AdminRequest) -> Result<u64, AdminError> {
        let Phase::Leading { token } = self.phase else {
            return Err(AdminError::NotLeader(self.known.as_ref().map(|k| k.node_id.clone())));
        };
        if !self.lease_valid(now) {
            return Err(AdminError::NotLeader(None));
        }
        if let AdminRequest::TransferTo(target) = req {
            if *target == self.node_id {
                return Err(AdminError::SelfTarget(target.clone()));
            }
        }
        Ok(token)
    }

    /// Stops claiming before resigning to hand over: the next candidate's
    /// campaign returns as soon as the key is deleted.
    pub fn hand_over(&mut self, token: u64) -> Effects {
        self.phase = Phase::Idle;
        Effects {
            events: vec![Event::SteppedDown { term: Term(token), reason: StepDownReason::Transferred }],
            resign: true,
            ..Effects::default()
        }
    }

    /// The hand-over's resignation was confirmed (back in line, behind
    /// every candidate already waiting), or not: then the key stays until
    /// the lease expires, which this node stops keeping alive, and it waits
    /// a TTL before it joins again.
    pub fn handed_over(&mut self, now: Nanos, resigned: bool) -> Effects {
        if resigned {
            return self.campaign(false);
        }
        let revoke = self.lease.take().map(|l| {
            self.retry_at = now.plus(l.ttl);
            l.id
        });
        Effects { revoke, ..Effects::default() }
    }

    /// What the API reports.
    pub fn view(&self) -> LeaderView {
        let highest = self.highest.max(self.known.as_ref().map_or(0, |k| k.token));
        let base = follower_view(&self.node_id, highest, self.healthy, self.storage_ok);
        match (self.phase, self.lease) {
            (Phase::Leading { token }, Some(l)) => LeaderView {
                role: Role::Leader,
                term: Term(highest.max(token)),
                leader_id: Some(self.node_id.clone()),
                leader_address: Some(self.advertise.clone()),
                fencing_token: Some(Term(token)),
                lease_until: Some(l.valid_until),
                ..base
            },
            (phase, _) => {
                let role = if phase == Phase::Idle { Role::Follower } else { Role::Candidate };
                let known = self.known.as_ref();
                LeaderView {
                    role,
                    leader_id: known.map(|k| k.node_id.clone()),
                    leader_address: known.and_then(|k| k.address.clone()),
                    fencing_token: known.map(|k| Term(k.token)),
                    ..base
                }
            }
        }
    }
}

/// A view with no leader known, before the backend fills in what it knows.
pub fn follower_view(node_id: &NodeId, highest: u64, healthy: bool, storage_ok: bool) -> LeaderView {
    LeaderView {
        node_id: node_id.clone(),
        role: Role::Follower,
        term: Term(highest),
        leader_id: None,
        leader_address: None,
        fencing_token: None,
        lease_until: None,
        promise_until: Nanos::ZERO,
        healthy,
        storage_ok,
    }
}

/// etcd serves candidates in the order they campaigned: a leader can hand
/// over only to the one next in line (`others`, in etcd's order).
pub fn check_transfer(target: &NodeId, others: &[NodeId], election: &str) -> Result<(), AdminError> {
    match others.first() {
        Some(next) if next == target => Ok(()),
        Some(next) if others.contains(target) => Err(AdminError::Refused(format!(
            "etcd's election serves candidates in the order they joined: the next leader is {next}, not {target}; \
             hand over to {next} with step-down, or see docs/etcd.md"
        ))),
        _ => Err(AdminError::Refused(format!(
            "{target} is not a candidate in etcd election {election:?} (stopped, unhealthy or priority 0)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;
    const TTL: Duration = Duration::from_secs(2);

    fn machine(highest: u64) -> Machine {
        Machine::new(NodeId::new("a"), "a:5432".into(), 1, 0.01, highest, true, 7)
    }

    /// Grants a lease at `at` and returns the campaign it starts.
    fn grant(m: &mut Machine, at: u64) -> Effects {
        assert_eq!(m.on_timer(Nanos(at)), Tick::Grant);
        m.granted(Nanos(at), 42, TTL)
    }

    /// A machine that leads with `token` since `at` (lease from `at`).
    fn leading(highest: u64, token: u64, at: u64) -> Machine {
        let mut m = machine(highest);
        let e = grant(&mut m, at);
        assert_eq!(e.campaign, Some(false));
        let e = m.won(Nanos(at), token);
        assert_eq!(e.record, Some(Record { token, then_lead: true }), "a new token is written before it leads");
        let e = m.recorded(Nanos(at), Record { token, then_lead: true }, true);
        assert_eq!(e.events, vec![Event::ElectionWon { term: Term(token) }]);
        m
    }

    #[test]
    fn it_leads_only_once_the_new_token_is_durable() {
        let mut m = machine(5);
        let _ = grant(&mut m, SEC);
        let e = m.won(Nanos(SEC), 9);
        let r = e.record.expect("written first");
        assert!(!m.view().is_leader(Nanos(SEC)), "not before the token file holds 9");
        let e = m.recorded(Nanos(SEC), r, true);
        assert_eq!(e.events, vec![Event::ElectionWon { term: Term(9) }]);
        assert!(m.view().is_leader(Nanos(SEC)));
        assert_eq!(m.view().fencing_token, Some(Term(9)));
        assert_eq!(m.highest(), 9);
    }

    #[test]
    fn a_failed_token_write_resigns_and_reports_a_storage_fault() {
        let mut m = machine(5);
        let _ = grant(&mut m, SEC);
        let r = m.won(Nanos(SEC), 9).record.expect("written first");
        let e = m.recorded(Nanos(SEC), r, false);
        assert_eq!((e.events, e.resign, e.backoff), (vec![Event::StorageFault], true, true));
        let v = m.view();
        assert!(!v.is_leader(Nanos(SEC)) && !v.storage_ok);
        assert_eq!(m.highest(), 5, "an unwritten token is not counted as seen");
    }

    #[test]
    fn a_regressed_token_is_refused_loudly_and_resigned() {
        // etcd restored from an older snapshot: its revisions rewound below
        // the highest token this node wrote down.
        let mut m = machine(100);
        let _ = grant(&mut m, SEC);
        let e = m.won(Nanos(SEC), 40);
        assert_eq!(e.notes, vec![Note::TokenRegressed { token: 40, highest: 100 }]);
        assert!(e.resign && e.backoff && e.record.is_none() && e.events.is_empty());
        assert!(!m.view().is_leader(Nanos(SEC)));
        assert_eq!(m.phase(), Phase::Idle);
        m.back_off(Nanos(SEC));
        assert_eq!(m.on_timer(Nanos(SEC)), Tick::Nothing, "backs off before campaigning again");
        // The same token as the highest is refused too: it may be someone
        // else's, handed out again.
        let e = m.won(Nanos(3 * SEC), 100);
        assert!(e.resign, "{e:?}");
    }

    #[test]
    fn a_rewound_revision_seen_in_the_election_does_not_lower_the_tokens() {
        let mut m = leading(0, 50, SEC);
        let e = m.observed(Nanos(SEC), Some(Known { node_id: NodeId::new("b"), address: None, token: 30, lease: 9 }));
        assert!(e.record.is_none() && e.events.is_empty(), "an older key does not unseat this node: {e:?}");
        assert!(m.view().is_leader(Nanos(SEC)));
        assert_eq!(m.highest(), 50);
        assert_eq!(m.view().term, Term(50));
    }

    #[test]
    fn a_lost_keep_alive_lapses_the_lease_and_a_late_renewal_resumes_the_same_token() {
        let mut m = leading(0, 7, SEC);
        let until = m.lease().expect("lease").valid_until;
        // 2s at 1% drift: 1.96s of local lease.
        assert_eq!(until, Nanos(SEC).plus(lease::leader_lease(TTL, lease::drift_ppm(0.01))));
        assert_eq!(m.next_timer(), Some(until));
        assert_eq!(m.on_timer(Nanos(until.0 - 1)), Tick::Nothing);
        assert!(m.view().is_leader(Nanos(until.0 - 1)));
        let Tick::Effects(e) = m.on_timer(until) else { panic!("the lease lapses at its end") };
        assert_eq!(e.events, vec![Event::SteppedDown { term: Term(7), reason: StepDownReason::LeaseLapsed }]);
        assert!(!m.view().is_leader(until));
        assert_eq!(m.phase(), Phase::Lapsed { token: 7 });
        // A keep-alive that fails is not a renewal.
        let e = m.renewal(until, Renewal::Failing("timeout".into()));
        assert_eq!(e.notes, vec![Note::Failed { what: "keep-alive: timeout".into(), first: true }]);
        assert!(e.events.is_empty() && e.campaign.is_none());
        assert!(!m.view().is_leader(until));
        // etcd renews the same lease: read the key back and lead again.
        let later = until.plus(Duration::from_millis(100));
        let e = m.renewal(later, Renewal::Extended { sent_at: later, ttl: TTL, key_present: true });
        assert_eq!(e.campaign, Some(true), "resume with the kept key");
        assert!(e.notes.contains(&Note::Answering));
        let e = m.won(later, 7);
        assert!(e.record.is_none() && !e.resign, "its own token again needs no write: {e:?}");
        assert_eq!(e.notes, vec![Note::LeadingAgain { token: 7 }]);
        assert!(m.view().is_leader(later));
    }

    #[test]
    fn a_new_token_made_durable_after_the_lease_lapsed_resumes_without_a_false_alarm() {
        let mut m = machine(5);
        let _ = grant(&mut m, SEC);
        let r = m.won(Nanos(SEC), 9).record.expect("written first");
        // The write took longer than the local lease.
        let late = Nanos(4 * SEC);
        assert_eq!(m.recorded(late, r, true), Effects::default());
        assert_eq!(m.phase(), Phase::Lapsed { token: 9 });
        assert!(!m.view().is_leader(late));
        let e = m.renewal(late, Renewal::Extended { sent_at: late, ttl: TTL, key_present: true });
        assert_eq!(e.campaign, Some(true));
        let e = m.won(late, 9);
        assert!(e.notes.iter().all(|n| !matches!(n, Note::TokenRegressed { .. })) && !e.resign, "{e:?}");
        assert!(m.view().is_leader(late));
    }

    #[test]
    fn a_renewal_counts_from_its_send_and_never_shortens_the_lease() {
        let mut m = leading(0, 7, SEC);
        let first = m.lease().expect("lease").valid_until;
        let _ = m.renewal(Nanos(2 * SEC), Renewal::Extended { sent_at: Nanos(SEC / 2), ttl: TTL, key_present: true });
        assert_eq!(m.lease().expect("lease").valid_until, first, "an older send extends nothing");
        let _ = m.renewal(Nanos(2 * SEC), Renewal::Extended { sent_at: Nanos(SEC + 1), ttl: TTL, key_present: true });
        assert_eq!(m.lease().expect("lease").valid_until, first.plus(Duration::from_nanos(1)));
        let e = m.renewal(Nanos(2 * SEC), Renewal::Unconfirmed("term moved".into()));
        assert_eq!(e.notes, vec![Note::Unconfirmed("term moved".into())]);
        assert_eq!(m.lease().expect("lease").valid_until, first.plus(Duration::from_nanos(1)));
    }

    #[test]
    fn a_vanished_key_or_lease_ends_the_leadership_at_once() {
        let mut m = leading(0, 7, SEC);
        let e = m.renewal(Nanos(SEC), Renewal::Extended { sent_at: Nanos(SEC), ttl: TTL, key_present: false });
        assert_eq!(e.revoke, Some(42));
        assert_eq!(e.events, vec![Event::SteppedDown { term: Term(7), reason: StepDownReason::HigherTerm }]);
        assert!(!m.view().is_leader(Nanos(SEC)) && m.lease().is_none());
        let mut m = leading(0, 8, SEC);
        let e = m.renewal(Nanos(SEC), Renewal::Gone);
        assert_eq!(e.events, vec![Event::SteppedDown { term: Term(8), reason: StepDownReason::LeaseLapsed }]);
        assert_eq!(m.on_timer(Nanos(SEC)), Tick::Grant, "starts over with a new lease");
    }

    #[test]
    fn a_newer_key_unseats_this_node_and_its_token_is_recorded() {
        let mut m = leading(0, 7, SEC);
        let newer = Known { node_id: NodeId::new("b"), address: Some("b:5432".into()), token: 12, lease: 9 };
        let e = m.observed(Nanos(SEC), Some(newer));
        let r = Record { token: 12, then_lead: false };
        assert_eq!((e.record, e.revoke), (Some(r), Some(42)));
        assert!(!m.view().is_leader(Nanos(SEC)));
        assert_eq!(m.view().leader_id, Some(NodeId::new("b")));
        assert_eq!(m.recorded(Nanos(SEC), r, true), Effects::default(), "an observed token only raises the highest");
        assert_eq!(m.highest(), 12);
    }

    #[test]
    fn a_transfer_goes_only_to_the_candidate_next_in_line() {
        let line = [NodeId::new("b"), NodeId::new("c")];
        assert_eq!(check_transfer(&NodeId::new("b"), &line, "pg"), Ok(()));
        let not_next = check_transfer(&NodeId::new("c"), &line, "pg").expect_err("c is not next");
        assert!(not_next.to_string().contains("the next leader is b, not c"), "{not_next}");
        let absent = check_transfer(&NodeId::new("d"), &line, "pg").expect_err("d is not campaigning");
        assert!(absent.to_string().contains("d is not a candidate"), "{absent}");
        assert!(check_transfer(&NodeId::new("b"), &[], "pg").is_err());
    }

    #[test]
    fn only_a_leader_with_a_valid_lease_hands_over_and_not_to_itself() {
        let m = machine(0);
        assert_eq!(m.may_hand_over(Nanos(SEC), &AdminRequest::StepDown), Err(AdminError::NotLeader(None)));
        let mut m = leading(0, 7, SEC);
        let until = m.lease().expect("lease").valid_until;
        assert_eq!(m.may_hand_over(Nanos(SEC), &AdminRequest::StepDown), Ok(7));
        assert_eq!(
            m.may_hand_over(Nanos(SEC), &AdminRequest::TransferTo(NodeId::new("a"))),
            Err(AdminError::SelfTarget(NodeId::new("a")))
        );
        assert_eq!(m.may_hand_over(until, &AdminRequest::StepDown), Err(AdminError::NotLeader(None)));
        let e = m.hand_over(7);
        assert!(e.resign && !m.view().is_leader(Nanos(SEC)));
        let e = m.handed_over(Nanos(SEC), false);
        assert_eq!(e.revoke, Some(42), "an unconfirmed resignation stops keeping the lease");
        assert_eq!(m.on_timer(Nanos(SEC)), Tick::Nothing, "waits a TTL before joining again");
        assert_eq!(m.on_timer(Nanos(3 * SEC)), Tick::Grant);
    }

    #[test]
    fn an_unhealthy_or_priority_zero_node_stays_out() {
        let mut m = leading(0, 7, SEC);
        let e = m.health(Nanos(SEC), false);
        assert_eq!(e.notes[0], Note::Unhealthy);
        assert!(e.resign && e.revoke == Some(42));
        assert_eq!(m.on_timer(Nanos(5 * SEC)), Tick::Nothing);
        let _ = m.health(Nanos(5 * SEC), true);
        assert_eq!(m.on_timer(Nanos(5 * SEC)), Tick::Grant);
        let mut m = Machine::new(NodeId::new("a"), String::new(), 0, 0.01, 0, true, 7);
        assert_eq!((m.next_timer(), m.on_timer(Nanos(SEC))), (None, Tick::Nothing));
    }
}

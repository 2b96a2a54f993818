//! The persist-then-send contract of [`Outputs`], carried out in one place.
//!
//! A step may ask for its hard state to be written and may hold messages
//! until that write is durable (`send_after_persist`): a vote or a campaign
//! must not leave before the promise it makes survives a crash. The outbox
//! decides which messages may leave and when, from three inputs: each step's
//! outputs ([`Outbox::take`]), the completion of the oldest write under way
//! ([`Outbox::written`]) and its failure ([`Outbox::failed`]). It does no IO:
//! the real driver and the simulator both start the writes it names, in the
//! order it names them, and send what it releases.
//!
//! The rules:
//! - `send_now` leaves at once.
//! - A requested state becomes the newest write. Writes complete in the
//!   order they were started; a later state supersedes an earlier one (the
//!   file is replaced whole, and a newer term or vote binds the node at least
//!   as much as the one it replaces).
//! - `send_after_persist` waits for the newest write: by then every write
//!   requested so far is durable.
//! - A failed write drops the messages that waited for it. If no later write
//!   is under way, the latest state must be written again: the outbox keeps
//!   a *retry* waiting, which the caller starts after a pause
//!   ([`Outbox::start_retry`]) unless a newer state takes its place first.
//!   Messages made meanwhile wait for that retry.
//!
//! Owns: the writes under way and the messages each one holds. Must not:
//! read a clock or touch a file; time enters as the `now` of [`Outbox::take`].

use std::collections::VecDeque;

use super::{Envelope, HardState, Nanos, Outputs};

/// A message, with the local instant of the step that made it (a promise it
/// carries starts then, if it ever leaves).
#[derive(Clone, Debug, PartialEq)]
pub struct Held {
    pub msg: Envelope,
    pub made_at: Nanos,
}

/// What to do after a step, once the outbox has taken its outputs.
#[must_use]
#[derive(Debug, Default, PartialEq)]
pub struct Dispatch {
    /// Send these now.
    pub send: Vec<Held>,
    /// Start writing this state now (after every write started before it).
    pub write: Option<HardState>,
    /// Messages that waited for a write when none was requested or under way:
    /// the core broke its contract. They are dropped, never sent.
    pub orphaned: usize,
}

/// The oldest write under way completed durably.
#[must_use]
#[derive(Debug, PartialEq)]
pub struct Written {
    /// Report it to the node with `Input::Persisted`.
    pub state: HardState,
    /// Send these: what they depend on is durable now.
    pub send: Vec<Held>,
}

/// The oldest write under way failed.
#[must_use]
#[derive(Debug, PartialEq, Eq)]
pub struct Failed {
    /// How many waiting messages were dropped with it.
    pub dropped: usize,
    /// The latest state now waits to be written again: call
    /// [`Outbox::start_retry`] after a pause.
    pub retry: bool,
}

#[derive(Debug)]
struct Write {
    state: HardState,
    held: Vec<Held>,
    /// False only for a retry that waits for its pause.
    started: bool,
}

#[derive(Debug, Default)]
pub struct Outbox {
    /// Oldest first. Every started write comes before the one waiting retry.
    writes: VecDeque<Write>,
    /// The latest state a step asked for.
    latest: Option<HardState>,
    /// The simulator's negative control: held messages leave at once.
    send_before_persist: bool,
}

impl Outbox {
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// A broken outbox that sends held messages before their write is
    /// durable: the simulator's negative control, which its checker must
    /// catch. Never used by the driver.
    pub fn sending_before_persist() -> Outbox {
        Outbox { send_before_persist: true, ..Outbox::default() }
    }

    /// Takes a step's persist request and messages (leaving the rest of
    /// `out` to the caller); `now` is the local instant of that step.
    pub fn take(&mut self, now: Nanos, out: &mut Outputs) -> Dispatch {
        let stamp = |msg| Held { msg, made_at: now };
        let mut d = Dispatch { send: out.send_now.drain(..).map(stamp).collect(), ..Dispatch::default() };
        if let Some(state) = out.persist.take() {
            self.latest = Some(state.clone());
            match self.writes.back_mut() {
                // A newer state takes the place of a retry not yet started.
                Some(w) if !w.started => {
                    w.state = state.clone();
                    w.started = true;
                }
                _ => self.writes.push_back(Write { state: state.clone(), held: Vec::new(), started: true }),
            }
            d.write = Some(state);
        }
        let held = out.send_after_persist.drain(..).map(stamp);
        match self.writes.back_mut() {
            _ if self.send_before_persist => d.send.extend(held),
            Some(w) => w.held.extend(held),
            None => d.orphaned = held.count(),
        }
        d
    }

    /// The oldest write under way is durable. None if no write was started.
    pub fn written(&mut self) -> Option<Written> {
        if !self.writes.front()?.started {
            return None;
        }
        let w = self.writes.pop_front()?;
        Some(Written { state: w.state, send: w.held })
    }

    /// The oldest write under way failed. None if no write was started.
    pub fn failed(&mut self) -> Option<Failed> {
        if !self.writes.front()?.started {
            return None;
        }
        let w = self.writes.pop_front()?;
        let retry = match (&self.latest, self.writes.is_empty()) {
            (Some(latest), true) => {
                self.writes.push_back(Write { state: latest.clone(), held: Vec::new(), started: false });
                true
            }
            _ => false,
        };
        Some(Failed { dropped: w.held.len(), retry })
    }

    /// Starts the waiting retry: the state to write now, or None if a newer
    /// write already took its place.
    pub fn start_retry(&mut self) -> Option<HardState> {
        let w = self.writes.back_mut().filter(|w| !w.started)?;
        w.started = true;
        Some(w.state.clone())
    }

    /// No write is under way or waiting.
    pub fn is_idle(&self) -> bool {
        self.writes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Body, NodeId, Term, PROTOCOL_VERSION};

    fn state(term: u64, vote: Option<&str>) -> HardState {
        HardState::new(Term(term), vote.map(NodeId::new))
    }

    fn msg(to: &str, term: u64) -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            cluster_id: "c".into(),
            from: NodeId::new("a"),
            to: NodeId::new(to),
            term: Term(term),
            body: Body::VoteResponse { granted: true },
            from_incarnation: None,
            to_incarnation: None,
            group: None,
            config: None,
            position: None,
        }
    }

    fn outputs(persist: Option<HardState>, now: Vec<Envelope>, after: Vec<Envelope>) -> Outputs {
        Outputs { persist, send_now: now, send_after_persist: after, ..Outputs::default() }
    }

    fn targets(held: &[Held]) -> Vec<&str> {
        held.iter().map(|h| h.msg.to.as_str()).collect()
    }

    #[test]
    fn held_messages_leave_only_when_their_write_is_durable() {
        let mut o = Outbox::new();
        let d = o.take(Nanos(5), &mut outputs(Some(state(2, Some("b"))), vec![msg("c", 2)], vec![msg("b", 2)]));
        assert_eq!(targets(&d.send), ["c"]);
        assert_eq!(d.send[0].made_at, Nanos(5));
        assert_eq!(d.write, Some(state(2, Some("b"))));
        let w = o.written().expect("a write was under way");
        assert_eq!(w.state, state(2, Some("b")));
        assert_eq!(targets(&w.send), ["b"]);
        assert_eq!(w.send[0].made_at, Nanos(5), "a held message keeps the instant of the step that made it");
        assert!(o.is_idle());
        assert_eq!(o.written(), None, "nothing else was under way");
    }

    #[test]
    fn held_messages_wait_for_the_newest_write() {
        let mut o = Outbox::new();
        let _ = o.take(Nanos(1), &mut outputs(Some(state(2, None)), vec![], vec![msg("b", 2)]));
        let d = o.take(Nanos(2), &mut outputs(Some(state(3, None)), vec![], vec![msg("c", 3)]));
        assert_eq!(d.write, Some(state(3, None)), "the second write starts behind the first");
        // A step with no write of its own: its held messages wait for the
        // newest write under way, not for the oldest.
        let d = o.take(Nanos(3), &mut outputs(None, vec![], vec![msg("d", 3)]));
        assert_eq!((d.write, d.send.len(), d.orphaned), (None, 0, 0));
        assert_eq!(targets(&o.written().expect("first").send), ["b"]);
        assert_eq!(targets(&o.written().expect("second").send), ["c", "d"]);
    }

    #[test]
    fn a_failed_write_drops_its_messages_and_the_latest_state_is_retried() {
        let mut o = Outbox::new();
        let _ = o.take(Nanos(1), &mut outputs(Some(state(4, Some("a"))), vec![], vec![msg("b", 4), msg("c", 4)]));
        let f = o.failed().expect("a write was under way");
        assert_eq!(f, Failed { dropped: 2, retry: true });
        assert!(!o.is_idle(), "the retry waits");
        // Made while the retry waits: these wait for it, they do not leave.
        let d = o.take(Nanos(2), &mut outputs(None, vec![], vec![msg("b", 4)]));
        assert!(d.send.is_empty() && d.orphaned == 0);
        assert_eq!(o.written(), None, "a retry not yet started cannot complete");
        assert_eq!(o.start_retry(), Some(state(4, Some("a"))));
        assert_eq!(o.start_retry(), None, "started once");
        let w = o.written().expect("the retry");
        assert_eq!((w.state, targets(&w.send)), (state(4, Some("a")), vec!["b"]));
        assert!(o.is_idle());
    }

    #[test]
    fn a_failed_write_with_a_later_one_under_way_needs_no_retry() {
        let mut o = Outbox::new();
        let _ = o.take(Nanos(1), &mut outputs(Some(state(4, None)), vec![], vec![msg("b", 4)]));
        let _ = o.take(Nanos(2), &mut outputs(Some(state(5, None)), vec![], vec![msg("c", 5)]));
        assert_eq!(o.failed(), Some(Failed { dropped: 1, retry: false }));
        assert_eq!(targets(&o.written().expect("the later write").send), ["c"]);
        assert!(o.is_idle());
    }

    #[test]
    fn a_newer_state_takes_the_place_of_a_waiting_retry() {
        let mut o = Outbox::new();
        let _ = o.take(Nanos(1), &mut outputs(Some(state(4, None)), vec![], vec![]));
        assert!(o.failed().expect("under way").retry);
        let _ = o.take(Nanos(2), &mut outputs(None, vec![], vec![msg("b", 4)]));
        let d = o.take(Nanos(3), &mut outputs(Some(state(5, None)), vec![], vec![msg("c", 5)]));
        assert_eq!(d.write, Some(state(5, None)), "started at once, in the retry's place");
        assert_eq!(o.start_retry(), None, "no retry waits any more");
        let w = o.written().expect("the newer write");
        assert_eq!((w.state, targets(&w.send)), (state(5, None), vec!["b", "c"]));
        assert!(o.is_idle());
    }

    #[test]
    fn held_messages_with_no_write_are_dropped_and_counted() {
        let mut o = Outbox::new();
        let d = o.take(Nanos(1), &mut outputs(None, vec![], vec![msg("b", 1)]));
        assert_eq!((d.send.len(), d.orphaned), (0, 1));
    }

    #[test]
    fn the_negative_control_sends_before_the_write() {
        let mut o = Outbox::sending_before_persist();
        let d = o.take(Nanos(1), &mut outputs(Some(state(2, Some("b"))), vec![], vec![msg("b", 2)]));
        assert_eq!(targets(&d.send), ["b"], "the broken outbox does not wait");
        assert!(o.written().expect("the write still happens").send.is_empty());
    }
}

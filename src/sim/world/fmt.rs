//! How the simulated world writes views, votes and events in its trace.

use crate::core::{Event, HardState, LeaderView, NodeId, Role};

pub(super) fn fmt_vote(hs: &HardState) -> String {
    hs.voted_for.as_ref().map_or("none".to_string(), |v| v.to_string())
}

pub(super) fn fmt_view(id: &NodeId, v: &LeaderView) -> String {
    match v.role {
        Role::Leader => format!("{id} is leader term={} token={}", v.term, v.term),
        role => match &v.leader_id {
            Some(l) => format!("{id} is {} term={} leader={l}", role.as_str(), v.term),
            None => format!("{id} is {} term={} leader=none", role.as_str(), v.term),
        },
    }
}

pub(super) fn fmt_event(e: &Event) -> String {
    match e {
        Event::PreVoteStarted { next_term } => format!("pre-vote for term {next_term}"),
        Event::PreVoteFailed { next_term } => format!("pre-vote for term {next_term} failed"),
        Event::ElectionStarted { term, transfer } => {
            format!("campaigns for term {term}{}", if *transfer { " (transfer)" } else { "" })
        }
        Event::ElectionWon { term } => format!("won term {term}"),
        Event::ElectionLost { term } => format!("lost term {term}"),
        Event::SteppedDown { term, reason } => format!("stepped down from term {term}: {reason:?}"),
        Event::TransferStarted { term, to } => match to {
            Some(to) => format!("ends its lease of term {term} and hands over to {to}"),
            None => format!("ends its lease of term {term} (no eligible peer)"),
        },
        Event::StorageFault => "storage fault".to_string(),
        Event::StorageRecovered => "storage recovered".to_string(),
        Event::PositionRefused { candidate, reason } => {
            format!("refuses {candidate} for its replication position ({})", reason.as_str())
        }
        Event::AckRoundTrip { peer, rtt } => format!("ack from {peer} after {rtt:?}"),
        Event::ConfigurationHeld { group, voter } => {
            format!("holds the configuration of group {group} as a {}", if *voter { "voter" } else { "learner" })
        }
        Event::MembershipChange { who, add, epoch } => {
            format!("{} {who} (epoch {epoch})", if *add { "adds" } else { "removes" })
        }
        Event::Renewed { old, new } => format!("renews its identity: {old} -> {new}"),
        Event::Converted { group, voters } => format!("converts to managed group {group} ({voters} voters)"),
        Event::GenesisProposed { group } => format!("proposes the genesis of group {group}"),
        Event::GenesisWithdrawn { group } => format!("withdraws from the genesis of group {group}"),
    }
}

//! How a managed node's membership state (DESIGN §2b) reads in the state
//! file: identities and group uids as hex text, configurations and the
//! genesis it accepted as plain JSON objects. A file that holds any of it
//! is written as version 2 (`leasehold-state 2`), which versions that know
//! only version 1 refuse: run as a static group, such a node would vote
//! under names its group no longer uses.

use serde::{Deserialize, Serialize};

use crate::core::{Configuration, GroupUid, Identity, Incarnation, MemberState, NodeId, Proposal, Term};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(super) struct MembersBody {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<ConfigBody>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    accepted: Option<AcceptedBody>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    withdrawn: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    renewed: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    abandoned: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct ConfigBody {
    group: String,
    cterm: u64,
    epoch: u64,
    voters: Vec<[String; 2]>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    removed: Vec<[String; 2]>,
    generation: u64,
    floor: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct AcceptedBody {
    group: String,
    voters: Vec<[String; 2]>,
    generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    forced: Option<String>,
    /// This identity's wall-clock reading sent with its acceptance.
    wall_micros: u64,
}

fn identities<'a>(ids: impl IntoIterator<Item = &'a Identity>) -> Vec<[String; 2]> {
    ids.into_iter().map(|i| [i.name.to_string(), i.incarnation.to_string()]).collect()
}

fn parse_identities(ids: &[[String; 2]]) -> Result<std::collections::BTreeSet<Identity>, String> {
    ids.iter().map(|[name, inc]| Ok(Identity::new(NodeId::new(name.clone()), inc.parse::<Incarnation>()?))).collect()
}

fn parse_group(text: &str) -> Result<GroupUid, String> {
    // The same text as an incarnation: 32 lowercase hex digits, not zero.
    text.parse::<Incarnation>().map(|i| GroupUid(i.0)).map_err(|_| format!("group uid {text:?} is not 32 hex digits"))
}

impl MembersBody {
    pub(super) fn from_state(m: &MemberState) -> Self {
        MembersBody {
            config: m.config.as_ref().map(|c| ConfigBody {
                group: c.group.to_string(),
                cterm: c.cterm.0,
                epoch: c.epoch,
                voters: identities(&c.voters),
                removed: identities(&c.removed),
                generation: c.generation,
                floor: c.floor.0,
            }),
            accepted: m.accepted.as_ref().map(|(p, wall_micros)| AcceptedBody {
                group: p.group.to_string(),
                voters: identities(&p.voters),
                generation: p.generation,
                forced: p.forced.map(|g| g.to_string()),
                wall_micros: *wall_micros,
            }),
            withdrawn: m.withdrawn.iter().map(ToString::to_string).collect(),
            abandoned: m.abandoned.iter().map(ToString::to_string).collect(),
            renewed: m.renewed.map(|i| i.to_string()),
        }
    }

    pub(super) fn to_state(&self) -> Result<MemberState, String> {
        let config = match &self.config {
            None => None,
            Some(c) => Some(Configuration {
                group: parse_group(&c.group)?,
                cterm: Term(c.cterm),
                epoch: c.epoch,
                voters: parse_identities(&c.voters)?,
                removed: parse_identities(&c.removed)?,
                generation: c.generation,
                floor: Term(c.floor),
            }),
        };
        let accepted = match &self.accepted {
            None => None,
            Some(a) => Some((
                Proposal {
                    group: parse_group(&a.group)?,
                    voters: parse_identities(&a.voters)?,
                    generation: a.generation,
                    forced: a.forced.as_deref().map(parse_group).transpose()?,
                },
                a.wall_micros,
            )),
        };
        Ok(MemberState {
            config,
            accepted,
            withdrawn: self.withdrawn.iter().map(|g| parse_group(g)).collect::<Result<_, _>>()?,
            abandoned: self.abandoned.iter().map(|g| parse_group(g)).collect::<Result<_, _>>()?,
            renewed: self.renewed.as_deref().map(str::parse::<Incarnation>).transpose()?,
        })
    }
}

//! The peer wire format, without IO: frames of a 4-byte big-endian length and
//! a postcard payload, a hard size cap, and the handshake ([`Hello`]) that
//! opens every connection in each direction.
//!
//! The hello has three versions. Version 1 (protocol 1's, byte for byte)
//! names the cluster and the node; version 2 adds the node's incarnation
//! (DESIGN §2b); version 3 adds its [`Standing`]: static, upgrading (rule
//! 11, with the digest of its static voters), or managed, blank or holding
//! a configuration. A node answers a hello in the version it was greeted
//! in, and dials in version 3 first, one version lower each time a peer
//! closes on it (a node of an earlier version refuses any hello it does not
//! know). The messages after the hello are the same in all.
//!
//! Why postcard: the messages are small structs with a few integers and short
//! strings; postcard (serde, varint integers, length-prefixed strings, a
//! documented stable format) encodes a heartbeat in a few dozen bytes, and
//! its decoder returns an error, never a panic, on any input. The envelope
//! still carries the protocol version, so a future format can be told apart.
//!
//! Must not: allocate more than [`MAX_FRAME_BYTES`] for a frame a peer
//! announces, or accept trailing bytes after a payload.

use std::fmt;

use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::{Envelope, Incarnation, NodeId, PeerKind, MANAGED_PROTOCOL_VERSION, PROTOCOL_VERSION};

/// No peer message comes near this; a larger announced length closes the
/// connection before anything is allocated for it.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// "LHLD": the first four payload bytes of a hello, so that a stray client
/// (an HTTP request, a port scanner) is told apart from an old peer.
pub const HELLO_MAGIC: u32 = 0x4C48_4C44;

/// The newest hello this node speaks (with its incarnation and standing).
pub const HELLO_VERSION: u32 = 3;

/// What a node is, as its version-3 hello says (membership rule 11).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Standing {
    /// A static node (`--peers`).
    #[default]
    Static,
    /// A static node started with `--peers-file`: it converts with its
    /// group. The digest of its state file's voters
    /// ([`crate::core::static_digest`]).
    Upgrading { digest: u64 },
    /// A managed node that holds no configuration.
    Blank,
    /// A managed node that holds a configuration.
    Holding,
}

impl Standing {
    fn tag(self) -> (u8, u64) {
        match self {
            Standing::Static => (0, 0),
            Standing::Upgrading { digest } => (1, digest),
            Standing::Blank => (2, 0),
            Standing::Holding => (3, 0),
        }
    }
}

/// The first frame each side sends on a connection. On the wire: magic,
/// version, cluster id, node id, from version 2 the incarnation, and in
/// version 3 the standing (a tag byte and a digest).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    pub magic: u32,
    pub version: u32,
    pub cluster_id: String,
    pub node_id: NodeId,
    /// Version 2 and later.
    pub incarnation: Option<Incarnation>,
    /// Version 3 only (`Static` in earlier versions).
    pub standing: Standing,
}

impl Hello {
    /// A version-1 hello, as protocol 1 sends it.
    pub fn new(cluster_id: &str, node_id: &NodeId) -> Self {
        Hello {
            magic: HELLO_MAGIC,
            version: PROTOCOL_VERSION,
            cluster_id: cluster_id.into(),
            node_id: node_id.clone(),
            incarnation: None,
            standing: Standing::Static,
        }
    }

    /// A version-2 hello, naming this node's incarnation.
    pub fn with_incarnation(cluster_id: &str, node_id: &NodeId, incarnation: Incarnation) -> Self {
        Hello { version: 2, incarnation: Some(incarnation), ..Hello::new(cluster_id, node_id) }
    }

    /// A version-3 hello, naming this node's incarnation and standing.
    pub fn with_standing(cluster_id: &str, node_id: &NodeId, incarnation: Incarnation, standing: Standing) -> Self {
        Hello { version: 3, standing, ..Hello::with_incarnation(cluster_id, node_id, incarnation) }
    }

    /// What the peer is, for the core (`Input::Peer`): a hello without an
    /// incarnation, or of an earlier version, is a static node's.
    pub fn peer_kind(&self) -> PeerKind {
        match (self.incarnation, self.standing) {
            (Some(incarnation), Standing::Upgrading { digest }) => PeerKind::Upgrading { incarnation, digest },
            (Some(incarnation), Standing::Blank) => PeerKind::Managed { incarnation, blank: true },
            (Some(incarnation), Standing::Holding) => PeerKind::Managed { incarnation, blank: false },
            _ => PeerKind::Static,
        }
    }
}

impl Serialize for Hello {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let three = self.version >= 3 && self.incarnation.is_some();
        let fields = if three {
            7
        } else if self.incarnation.is_some() {
            5
        } else {
            4
        };
        let mut t = s.serialize_tuple(fields)?;
        t.serialize_element(&self.magic)?;
        t.serialize_element(&self.version)?;
        t.serialize_element(&self.cluster_id)?;
        t.serialize_element(&self.node_id)?;
        if let Some(i) = &self.incarnation {
            t.serialize_element(i)?;
        }
        if three {
            let (tag, digest) = self.standing.tag();
            t.serialize_element(&tag)?;
            t.serialize_element(&digest)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for Hello {
    /// Reads the incarnation from version 2 and the standing in version 3:
    /// a version-1 hello is four fields, and [`decode`] refuses bytes left
    /// over.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> Visitor<'de> for Fields {
            type Value = Hello;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a leasehold hello")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Hello, A::Error> {
                let magic = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let version: u32 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let cluster_id = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(2, &self))?;
                let node_id = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(3, &self))?;
                let incarnation = match version {
                    2 | 3 => Some(seq.next_element()?.ok_or_else(|| de::Error::invalid_length(4, &self))?),
                    _ => None,
                };
                let standing = match version {
                    3 => {
                        let tag: u8 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(5, &self))?;
                        let digest: u64 = seq.next_element()?.ok_or_else(|| de::Error::invalid_length(6, &self))?;
                        match tag {
                            0 => Standing::Static,
                            1 => Standing::Upgrading { digest },
                            2 => Standing::Blank,
                            3 => Standing::Holding,
                            _ => return Err(de::Error::custom(format!("unknown standing {tag}"))),
                        }
                    }
                    _ => Standing::Static,
                };
                Ok(Hello { magic, version, cluster_id, node_id, incarnation, standing })
            }
        }
        d.deserialize_tuple(7, Fields)
    }
}

/// Why a connection was closed. `label` is the `reason` of
/// `leasehold_rejected_messages_total`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")]
    Oversize(usize),
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("not a leasehold peer (bad handshake magic)")]
    NotAPeer,
    #[error("peer speaks hello version {0}, this node 1 to {HELLO_VERSION}")]
    Version(u32),
    #[error("peer belongs to cluster {0:?}")]
    ClusterId(String),
    #[error("peer {0} is not a voter of this group")]
    UnknownPeer(NodeId),
}

impl FrameError {
    pub fn label(&self) -> &'static str {
        use crate::labels::reason;
        match self {
            FrameError::Oversize(_) => reason::OVERSIZE,
            FrameError::Malformed(_) => reason::MALFORMED,
            FrameError::NotAPeer => reason::NOT_A_PEER,
            FrameError::Version(_) => reason::VERSION,
            FrameError::ClusterId(_) => reason::CLUSTER_ID,
            FrameError::UnknownPeer(_) => reason::UNKNOWN_PEER,
        }
    }
}

/// Encodes one frame: length prefix and payload.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let payload = postcard::to_allocvec(msg).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if payload.len() > MAX_FRAME_BYTES {
        return Err(FrameError::Oversize(payload.len()));
    }
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Decodes a whole payload; trailing bytes are an error.
pub fn decode<'a, T: Deserialize<'a>>(payload: &'a [u8]) -> Result<T, FrameError> {
    let (value, rest) = postcard::take_from_bytes(payload).map_err(|e| FrameError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(FrameError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(value)
}

/// The body number of the first membership message (`Body::Announce`):
/// those travel only in protocol 2's envelope (DESIGN §2b).
const FIRST_MEMBERSHIP_BODY: u32 = 7;

/// Decodes an envelope received on a connection opened with a hello of
/// `hello_version`. Protocol 1's envelope carries protocol 1's messages
/// only: a membership message in it is refused by its body number, read
/// before anything of it is decoded. Protocol 2's envelope arrives only on
/// a connection whose hello was version 2 (a node of protocol 1 never
/// sends one).
pub fn decode_envelope(payload: &[u8], hello_version: u32) -> Result<Envelope, FrameError> {
    // version, cluster id, from, to, term, then the body's number; the
    // strings are borrowed, so this allocates nothing.
    if let Ok(((version, _, _, _, _, body), _)) =
        postcard::take_from_bytes::<(u32, &str, &str, &str, u64, u32)>(payload)
    {
        if version < MANAGED_PROTOCOL_VERSION && body >= FIRST_MEMBERSHIP_BODY {
            return Err(FrameError::Malformed(format!("message {body} is not one of protocol 1")));
        }
        if version >= MANAGED_PROTOCOL_VERSION && hello_version < 2 {
            return Err(FrameError::Malformed(format!("protocol {version} after a hello of version 1")));
        }
        if version > crate::core::POSITIONS_PROTOCOL_VERSION {
            return Err(FrameError::Malformed(format!("protocol {version} is not one this node speaks")));
        }
    }
    decode(payload)
}

/// Checks a peer's hello against this group.
pub fn check_hello(payload: &[u8], cluster_id: &str, is_voter: impl Fn(&NodeId) -> bool) -> Result<Hello, FrameError> {
    // The magic comes first: anything else talking to the peer port (an
    // HTTP client, a scanner) is told apart before the rest is parsed.
    match postcard::take_from_bytes::<u32>(payload) {
        Ok((HELLO_MAGIC, _)) => {}
        _ => return Err(FrameError::NotAPeer),
    }
    // The version next: a later version's hello is told apart as such, not
    // as malformed, before its fields are parsed.
    match postcard::take_from_bytes::<(u32, u32)>(payload) {
        Ok(((_, version), _)) if !(1..=HELLO_VERSION).contains(&version) => return Err(FrameError::Version(version)),
        _ => {}
    }
    let hello: Hello = decode(payload)?;
    if hello.magic != HELLO_MAGIC {
        return Err(FrameError::NotAPeer);
    }
    if hello.cluster_id != cluster_id {
        return Err(FrameError::ClusterId(hello.cluster_id));
    }
    if !is_voter(&hello.node_id) {
        return Err(FrameError::UnknownPeer(hello.node_id));
    }
    Ok(hello)
}

/// Splits a byte stream into frame payloads. Feed it what the socket gave,
/// then take frames until it has none.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete payload, `None` if more bytes are needed, or an error
    /// (after which the connection must be closed).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if len > MAX_FRAME_BYTES {
            return Err(FrameError::Oversize(len));
        }
        if self.buf.len() < 4 + len {
            return Ok(None);
        }
        let payload = self.buf[4..4 + len].to_vec();
        self.buf.drain(..4 + len);
        Ok(Some(payload))
    }

    /// Bytes held that do not yet form a frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Body, Term};

    fn envelope() -> Envelope {
        Envelope {
            version: PROTOCOL_VERSION,
            cluster_id: "pg".into(),
            from: NodeId::new("a"),
            to: NodeId::new("b"),
            term: Term(42),
            body: Body::Heartbeat { round: 7, leader_address: "10.0.0.1:5432".into() },
            from_incarnation: None,
            to_incarnation: None,
            group: None,
            config: None,
            position: None,
        }
    }

    fn voters(id: &NodeId) -> bool {
        ["a", "b", "c"].contains(&id.as_str())
    }

    #[test]
    fn a_membership_message_is_refused_in_protocol_1_before_it_is_decoded() {
        let mut m = envelope();
        m.body = Body::Announce { desired: 1, pending: None, left: None };
        let frame = encode(&m).expect("encodes");
        let err = decode_envelope(&frame[4..], 2).expect_err("refused");
        assert!(matches!(&err, FrameError::Malformed(msg) if msg.contains("not one of protocol 1")), "{err:?}");
        // Every message of protocol 1 still decodes.
        let frame = encode(&envelope()).expect("encodes");
        assert_eq!(decode_envelope(&frame[4..], 2), Ok(envelope()));
    }

    /// Protocol 2 carries the managed fields, only after a hello of version
    /// 2, and protocol 1's bytes do not change with them: a protocol-1
    /// envelope drops them.
    #[test]
    fn protocol_2_carries_incarnations_group_and_configuration() {
        use crate::core::{Configuration, GroupUid, Identity};
        let mut m = envelope();
        m.version = MANAGED_PROTOCOL_VERSION;
        m.body = Body::Announce { desired: 9, pending: Some(GroupUid(5)), left: Some(GroupUid(4)) };
        m.from_incarnation = Some(Incarnation(7));
        m.to_incarnation = Some(Incarnation(8));
        m.group = Some(GroupUid(5));
        let voters = ["a", "b", "c"].map(|n| Identity::new(NodeId::new(n), Incarnation(1)));
        m.config = Some(Box::new(Configuration {
            group: GroupUid(5),
            cterm: Term(3),
            epoch: 4,
            voters: voters.into_iter().collect(),
            removed: Default::default(),
            generation: 2,
            floor: Term(1),
        }));
        let frame = encode(&m).expect("encodes");
        assert_eq!(decode_envelope(&frame[4..], 2), Ok(m.clone()));
        let err = decode_envelope(&frame[4..], 1).expect_err("refused after a version-1 hello");
        assert!(matches!(&err, FrameError::Malformed(msg) if msg.contains("after a hello of version 1")), "{err:?}");
        for cut in 0..frame.len() - 4 {
            assert!(decode_envelope(&frame[4..4 + cut], 2).is_err(), "truncated at {cut}");
        }
        // The same message in protocol 1 is protocol 1's bytes.
        let mut old = m.clone();
        old.version = PROTOCOL_VERSION;
        old.body = envelope().body;
        assert_eq!(encode(&old), encode(&envelope()));
        // Protocol 2's bytes read as protocol 3 lack the position.
        let mut later = frame[4..].to_vec();
        later[0] = 3;
        assert!(matches!(decode_envelope(&later, 2), Err(FrameError::Malformed(_))));
        // Protocol 3 adds the sender's position, and protocol 2 drops it.
        let mut three = m.clone();
        three.version = crate::core::POSITIONS_PROTOCOL_VERSION;
        three.position = Some(crate::core::Position { branch: Term(4), at: 0x16_b374_d048 });
        let frame3 = encode(&three).expect("encodes");
        assert_eq!(decode_envelope(&frame3[4..], 2), Ok(three.clone()));
        let mut two = three.clone();
        two.version = MANAGED_PROTOCOL_VERSION;
        assert_eq!(encode(&two), encode(&m), "protocol 2 carries no position");
        let mut four = frame3[4..].to_vec();
        four[0] = 4;
        assert!(matches!(decode_envelope(&four, 2), Err(FrameError::Malformed(_))), "protocol 4 is not spoken");
    }

    #[test]
    fn frames_round_trip_through_a_byte_at_a_time_stream() {
        let hello = encode(&Hello::new("pg", &NodeId::new("a"))).expect("encode");
        let msg = encode(&envelope()).expect("encode");
        assert!(msg.len() < 40, "a heartbeat is compact: {} bytes", msg.len());
        let mut r = FrameReader::default();
        let mut frames = Vec::new();
        for b in hello.iter().chain(&msg) {
            r.push(&[*b]);
            while let Some(f) = r.next_frame().expect("valid stream") {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 2);
        assert_eq!(check_hello(&frames[0], "pg", voters).expect("hello").node_id, NodeId::new("a"));
        assert_eq!(decode_envelope(&frames[1], 1).expect("envelope"), envelope());
        assert_eq!(r.buffered(), 0);
    }

    /// Version 1 is protocol 1's hello byte for byte; version 2 carries the
    /// incarnation; each decodes only whole, and a version 2 without its
    /// incarnation (or a version 1 with one) is malformed.
    #[test]
    fn hellos_of_both_versions_round_trip_and_only_whole() {
        let inc = Incarnation(0x0f1e_2d3c_4b5a_6978_8796_a5b4_c3d2_e1f0);
        let one = Hello::new("pg", &NodeId::new("a"));
        let two = Hello::with_incarnation("pg", &NodeId::new("a"), inc);
        let p1 = encode(&one).expect("encode")[4..].to_vec();
        let p2 = encode(&two).expect("encode")[4..].to_vec();
        assert_eq!(check_hello(&p1, "pg", voters), Ok(one.clone()));
        assert_eq!(check_hello(&p2, "pg", voters), Ok(two.clone()));
        // The version is the byte after the magic's varint.
        let at = postcard::to_allocvec(&HELLO_MAGIC).expect("encode").len();
        assert_eq!((p1[at], p2[at]), (1, 2));
        let mut extended = p1.clone();
        extended[at] = 2;
        assert_eq!(&p2[..p1.len()], &extended[..], "version 2 is version 1 and the incarnation");
        for cut in 0..p2.len() {
            assert!(check_hello(&p2[..cut], "pg", voters).is_err(), "cut at {cut}");
        }
        let mut v1_with_more = p2.clone();
        v1_with_more[at] = 1;
        assert!(matches!(check_hello(&v1_with_more, "pg", voters), Err(FrameError::Malformed(_))));
        assert!(matches!(check_hello(&extended, "pg", voters), Err(FrameError::Malformed(_))), "2 without incarnation");
        let mut v4 = p2.clone();
        v4[at] = 4;
        assert_eq!(check_hello(&v4, "pg", voters), Err(FrameError::Version(4)));
    }

    /// Version 3 is version 2 and the standing; it decodes only whole, an
    /// unknown standing is malformed, and each standing maps to what the
    /// core is told of the peer.
    #[test]
    fn a_version_3_hello_carries_the_standing() {
        let inc = Incarnation(0x77);
        let standings = [
            (Standing::Static, PeerKind::Static),
            (Standing::Upgrading { digest: 9 }, PeerKind::Upgrading { incarnation: inc, digest: 9 }),
            (Standing::Blank, PeerKind::Managed { incarnation: inc, blank: true }),
            (Standing::Holding, PeerKind::Managed { incarnation: inc, blank: false }),
        ];
        for (standing, kind) in standings {
            let three = Hello::with_standing("pg", &NodeId::new("a"), inc, standing);
            let p3 = encode(&three).expect("encode")[4..].to_vec();
            let got = check_hello(&p3, "pg", voters).expect("decodes");
            assert_eq!((got.peer_kind(), got), (kind, three));
            for cut in 0..p3.len() {
                assert!(check_hello(&p3[..cut], "pg", voters).is_err(), "cut at {cut}");
            }
        }
        let mut bad = Hello::with_standing("pg", &NodeId::new("a"), inc, Standing::Blank);
        bad.standing = Standing::Holding;
        let mut p = encode(&bad).expect("encode")[4..].to_vec();
        let tag_at = p.len() - 2;
        p[tag_at] = 4;
        assert!(matches!(check_hello(&p, "pg", voters), Err(FrameError::Malformed(_))), "unknown standing");
        let two = Hello::with_incarnation("pg", &NodeId::new("a"), inc);
        assert_eq!(two.peer_kind(), PeerKind::Static, "an earlier version's hello");
    }

    #[test]
    fn an_oversize_length_is_refused_before_anything_is_allocated() {
        let mut r = FrameReader::default();
        r.push(&u32::MAX.to_be_bytes());
        assert_eq!(r.next_frame(), Err(FrameError::Oversize(u32::MAX as usize)));
        assert_eq!(r.next_frame().expect_err("still refused").label(), "oversize");
    }

    #[test]
    fn handshakes_of_strangers_are_refused_with_a_reason() {
        let hello = |h: Hello| encode(&h).expect("encode")[4..].to_vec();
        let mut h = Hello::new("pg", &NodeId::new("a"));
        h.version = 9;
        assert_eq!(check_hello(&hello(h), "pg", voters), Err(FrameError::Version(9)));
        let h = Hello::new("mysql", &NodeId::new("a"));
        assert_eq!(check_hello(&hello(h), "pg", voters).expect_err("cluster").label(), "cluster_id");
        let h = Hello::new("pg", &NodeId::new("z"));
        assert_eq!(check_hello(&hello(h), "pg", voters).expect_err("peer").label(), "unknown_peer");
        assert_eq!(check_hello(b"GET / HTTP/1.1\r\n", "pg", voters), Err(FrameError::NotAPeer));
        assert_eq!(check_hello(b"", "pg", voters), Err(FrameError::NotAPeer));
    }

    #[test]
    fn every_truncation_and_corruption_of_a_message_is_an_error_or_a_valid_message() {
        let msg = encode(&envelope()).expect("encode");
        let payload = &msg[4..];
        for cut in 0..payload.len() {
            assert!(decode_envelope(&payload[..cut], 2).is_err(), "truncated at {cut}");
        }
        let mut extra = payload.to_vec();
        extra.push(0);
        assert!(matches!(decode_envelope(&extra, 2), Err(FrameError::Malformed(_))));
        // Flip every bit of every byte: decoding never panics.
        for i in 0..payload.len() {
            for bit in 0..8 {
                let mut b = payload.to_vec();
                b[i] ^= 1 << bit;
                let _ = decode_envelope(&b, 2);
            }
        }
    }
}

//! The peer wire format, without IO: frames of a 4-byte big-endian length and
//! a postcard payload, a hard size cap, and the handshake ([`Hello`]) that
//! opens every connection in each direction.
//!
//! Why postcard: the messages are small structs with a few integers and short
//! strings; postcard (serde, varint integers, length-prefixed strings, a
//! documented stable format) encodes a heartbeat in a few dozen bytes, and
//! its decoder returns an error, never a panic, on any input. The envelope
//! still carries the protocol version, so a future format can be told apart.
//!
//! Must not: allocate more than [`MAX_FRAME_BYTES`] for a frame a peer
//! announces, or accept trailing bytes after a payload.

use serde::{Deserialize, Serialize};

use crate::core::{Envelope, NodeId, PROTOCOL_VERSION};

/// No peer message comes near this; a larger announced length closes the
/// connection before anything is allocated for it.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// "LHLD": the first four payload bytes of a hello, so that a stray client
/// (an HTTP request, a port scanner) is told apart from an old peer.
pub const HELLO_MAGIC: u32 = 0x4C48_4C44;

/// The first frame each side sends on a connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub magic: u32,
    pub version: u32,
    pub cluster_id: String,
    pub node_id: NodeId,
}

impl Hello {
    pub fn new(cluster_id: &str, node_id: &NodeId) -> Self {
        Hello { magic: HELLO_MAGIC, version: PROTOCOL_VERSION, cluster_id: cluster_id.into(), node_id: node_id.clone() }
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
    #[error("peer speaks protocol version {0}, this node {PROTOCOL_VERSION}")]
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

pub fn decode_envelope(payload: &[u8]) -> Result<Envelope, FrameError> {
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
    let hello: Hello = decode(payload)?;
    if hello.magic != HELLO_MAGIC {
        return Err(FrameError::NotAPeer);
    }
    if hello.version != PROTOCOL_VERSION {
        return Err(FrameError::Version(hello.version));
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
        }
    }

    fn voters(id: &NodeId) -> bool {
        ["a", "b", "c"].contains(&id.as_str())
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
        assert_eq!(decode_envelope(&frames[1]).expect("envelope"), envelope());
        assert_eq!(r.buffered(), 0);
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
            assert!(decode_envelope(&payload[..cut]).is_err(), "truncated at {cut}");
        }
        let mut extra = payload.to_vec();
        extra.push(0);
        assert!(matches!(decode_envelope(&extra), Err(FrameError::Malformed(_))));
        // Flip every bit of every byte: decoding never panics.
        for i in 0..payload.len() {
            for bit in 0..8 {
                let mut b = payload.to_vec();
                b[i] ^= 1 << bit;
                let _ = decode_envelope(&b);
            }
        }
    }
}

//! `frame`: the peer wire format (src/transport/frame.rs) on arbitrary bytes.
//!
//! The input is used whole, two ways:
//! 1. As what a peer's socket delivered, pushed into a `FrameReader` in
//!    chunks of varying size. The frames it yields must be exactly those a
//!    one-pass split of the whole input finds; an announced length over
//!    `MAX_FRAME_BYTES` must be `Oversize` with that length, and stay so;
//!    whatever is left must be what `buffered()` reports. No single
//!    allocation may exceed the bytes actually received: an announced
//!    length allocates nothing.
//! 2. Every frame it yields, and the whole input as one payload, through
//!    `decode_envelope` and `check_hello`. An envelope that decodes
//!    re-encodes (never longer: the encoding is canonical, the decoder also
//!    takes over-long varints) and decodes to the same value, also through
//!    a `FrameReader`; with one byte more it is refused. A hello is
//!    accepted exactly when it decodes with the magic, this version, this
//!    cluster and a voter's id; each refusal names the first check that
//!    failed. Decoding allocates no more than the payload's size (and a
//!    short error message).
#![no_main]
// The clippy bans guard src/core; fuzz_target! reads files (its RUST_LIBFUZZER_DEBUG_PATH).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use leasehold::core::{Envelope, NodeId};
use leasehold::transport::frame::{
    check_hello, decode, decode_envelope, encode, FrameError, FrameReader, Hello, HELLO_MAGIC, HELLO_VERSION,
    MAX_FRAME_BYTES,
};
use libfuzzer_sys::fuzz_target;

/// Records the largest single allocation since the last reset.
struct Watched;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Watched {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Watched = Watched;

/// `f`'s result and the largest single allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::Relaxed);
    let out = f();
    (out, LARGEST.load(Ordering::Relaxed))
}

/// Room for an error message (a postcard error, "N trailing bytes"), or
/// for one B-tree node of a configuration's identities (protocol 2), which
/// its first identity allocates whole: a bound that does not grow with
/// what a payload claims.
const MESSAGE_BYTES: usize = {
    let node = 12 * (std::mem::size_of::<leasehold::core::Identity>() + std::mem::size_of::<usize>()) + 64;
    if node > 256 {
        node
    } else {
        256
    }
};

const CLUSTER: &str = "pg";

fn is_voter(id: &NodeId) -> bool {
    ["a", "b", "c"].contains(&id.as_str())
}

/// How a one-pass reading of a whole stream ends.
#[derive(Debug, PartialEq)]
enum End {
    /// This many bytes are left, too few for the next frame.
    Short(usize),
    /// The next frame announces this length, over the cap.
    Oversize(usize),
}

/// The reference: split `stream` into payloads in one pass.
fn split(stream: &[u8]) -> (Vec<&[u8]>, End) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let Some((prefix, tail)) = rest.split_first_chunk::<4>() else { return (frames, End::Short(rest.len())) };
        let len = u32::from_be_bytes(*prefix) as usize;
        if len > MAX_FRAME_BYTES {
            return (frames, End::Oversize(len));
        }
        if tail.len() < len {
            return (frames, End::Short(rest.len()));
        }
        frames.push(&tail[..len]);
        rest = &tail[len..];
    }
}

/// Chunk sizes a socket might deliver, picked by the input's length so that
/// one input is always read the same way.
const CHUNKS: [usize; 7] = [1, 3, 4, 5, 64, 2, 4096];

fn read_stream(data: &[u8]) -> Vec<Vec<u8>> {
    let (expected, end) = split(data);
    let mut reader = FrameReader::default();
    let mut frames: Vec<Vec<u8>> = Vec::new();
    let mut pushed = 0;
    let mut sizes = CHUNKS.iter().cycle().skip(data.len() % CHUNKS.len());
    let mut rest = data;
    let mut refused = None;
    'feed: while !rest.is_empty() {
        let take = (*sizes.next().expect("cycle")).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        pushed += chunk.len();
        let ((), largest) = largest_allocation(|| reader.push(chunk));
        // A buffer grows at most to twice what it was asked to hold.
        assert!(largest <= 2 * pushed + 8, "push allocated {largest} bytes after {pushed} were received");
        loop {
            let held = reader.buffered();
            let (next, largest) = largest_allocation(|| reader.next_frame());
            assert!(largest <= held, "next_frame allocated {largest} bytes holding {held}");
            match next {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(FrameError::Oversize(len)) => {
                    assert_eq!(reader.next_frame(), Err(FrameError::Oversize(len)), "a refused stream stays refused");
                    refused = Some(len);
                    break 'feed;
                }
                Err(other) => panic!("a frame reader can only refuse a length, got {other:?}"),
            }
        }
    }
    assert_eq!(frames, expected, "frames differ from a one-pass split");
    match (end, refused) {
        (End::Short(left), None) => assert_eq!(reader.buffered(), left, "bytes held that do not form a frame"),
        (End::Oversize(len), Some(refused)) => assert_eq!(refused, len, "the refusal names another length"),
        (end, refused) => panic!("the stream ends with {end:?}, the reader refused a length of {refused:?}"),
    }
    frames
}

fn check_envelope(payload: &[u8]) {
    let (decoded, largest) = largest_allocation(|| decode_envelope(payload, 2));
    assert!(largest <= payload.len() + MESSAGE_BYTES, "decoding {} bytes allocated {largest}", payload.len());
    let envelope: Envelope = match decoded {
        Ok(e) => e,
        Err(FrameError::Malformed(msg)) => {
            assert!(!msg.is_empty());
            return;
        }
        Err(other) => panic!("decode_envelope refused with {other:?}, not Malformed"),
    };
    let frame = encode(&envelope).expect("a decoded envelope encodes");
    let (prefix, again) = frame.split_first_chunk::<4>().expect("a length prefix");
    assert_eq!(u32::from_be_bytes(*prefix) as usize, again.len());
    assert!(again.len() <= payload.len(), "re-encoding is longer: {} > {}", again.len(), payload.len());
    assert_eq!(decode_envelope(again, 2).as_ref(), Ok(&envelope), "re-encoded envelope decodes differently");
    let trailing = [payload, &[0]].concat();
    assert!(matches!(decode_envelope(&trailing, 2), Err(FrameError::Malformed(_))), "a trailing byte is accepted");
    // Through a reader, fed at once.
    let mut reader = FrameReader::default();
    reader.push(&frame);
    assert_eq!(reader.next_frame(), Ok(Some(again.to_vec())));
    assert_eq!(reader.buffered(), 0);
}

fn check_handshake(payload: &[u8]) {
    let (checked, largest) = largest_allocation(|| check_hello(payload, CLUSTER, is_voter));
    assert!(largest <= payload.len() + MESSAGE_BYTES, "checking {} bytes allocated {largest}", payload.len());
    let plain: Result<Hello, FrameError> = decode(payload);
    // The first varint is the magic when some prefix of at most 5 bytes
    // decodes, whole, to it.
    let leads_with_magic = (1..=payload.len().min(5)).any(|k| decode::<u32>(&payload[..k]) == Ok(HELLO_MAGIC));
    assert_eq!(matches!(checked, Err(FrameError::NotAPeer)), !leads_with_magic, "{checked:?}");
    // Every refusal is counted under a reason the metrics pre-register.
    if let Err(e) = &checked {
        assert!(leasehold::labels::reason::ALL.contains(&e.label()), "{e:?} counted as {}", e.label());
    }
    match checked {
        Ok(hello) => {
            assert_eq!(plain.as_ref(), Ok(&hello));
            assert_eq!(hello.magic, HELLO_MAGIC);
            assert!((1..=HELLO_VERSION).contains(&hello.version));
            assert_eq!(hello.incarnation.is_some(), hello.version >= 2, "an incarnation from version 2 on");
            assert_eq!(hello.cluster_id, CLUSTER);
            assert!(is_voter(&hello.node_id));
            let frame = encode(&hello).expect("a hello encodes");
            assert!(frame.len() - 4 <= payload.len());
            assert_eq!(check_hello(&frame[4..], CLUSTER, is_voter), Ok(hello));
            let trailing = [payload, &[0]].concat();
            assert!(
                matches!(check_hello(&trailing, CLUSTER, is_voter), Err(FrameError::Malformed(_))),
                "trailing byte"
            );
        }
        Err(FrameError::NotAPeer) => {
            assert!(plain.as_ref().map_or(true, |h| h.magic != HELLO_MAGIC), "a stranger's hello has the magic")
        }
        Err(FrameError::Malformed(_)) => assert!(plain.is_err(), "a hello that decodes is not malformed"),
        Err(FrameError::Version(v)) => {
            // Refused on the two leading fields, before the rest is parsed.
            assert!(!(1..=HELLO_VERSION).contains(&v));
            let leads = (1..=payload.len()).any(|k| decode::<(u32, u32)>(&payload[..k]) == Ok((HELLO_MAGIC, v)));
            assert!(leads, "a version refusal read the magic and version {v}");
        }
        Err(FrameError::ClusterId(c)) => {
            let hello = plain.expect("a cluster refusal decoded the hello");
            assert_eq!(hello.magic, HELLO_MAGIC);
            assert!((1..=HELLO_VERSION).contains(&hello.version));
            assert_eq!(hello.cluster_id, c);
            assert_ne!(c, CLUSTER);
        }
        Err(FrameError::UnknownPeer(id)) => {
            let hello = plain.expect("a peer refusal decoded the hello");
            assert_eq!((hello.magic, hello.cluster_id.as_str()), (HELLO_MAGIC, CLUSTER));
            assert!((1..=HELLO_VERSION).contains(&hello.version));
            assert_eq!(hello.node_id, id);
            assert!(!is_voter(&id));
        }
        Err(FrameError::Oversize(n)) => panic!("check_hello refused a payload as oversize ({n})"),
    }
}

fuzz_target!(|data: &[u8]| {
    for frame in read_stream(data) {
        check_envelope(&frame);
        check_handshake(&frame);
    }
    check_envelope(data);
    check_handshake(data);
});

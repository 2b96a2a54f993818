//! `state_file`: the state file's parser (`storage::parse`, what
//! `StateFile::load` reads) on arbitrary bytes.
//!
//! Properties:
//! 1. It never panics, and a refusal's reason is one line (it ends up in a
//!    one-line start-up refusal).
//! 2. Anything accepted re-serialises (`storage::encode`) to a file that
//!    parses to the same identity and state, and that canonical file
//!    re-serialises to itself.
//! 3. A single changed byte of an accepted file is refused or parses to the
//!    very same identity, term and vote: never to another state. The
//!    CRC-32 covers the whole state line and detects every error burst of
//!    up to 32 bits, so any one-byte change there is caught; elsewhere the
//!    magic and "crc32 " must match exactly and the line structure is
//!    fixed, so what can still be accepted is a change of the checksum's
//!    spelling only (hex digit case, or a leading '0' turned into '+'),
//!    which leaves the state line, and so the state, as it was. Checked:
//!    every bit flip (of up to 256 positions spread over the file), and
//!    every byte value at one position picked by the input.
#![no_main]
// The clippy bans guard src/core; fuzz_target! reads files (its RUST_LIBFUZZER_DEBUG_PATH).
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use leasehold::core::HardState;
use leasehold::storage::{self, Identity};
use libfuzzer_sys::fuzz_target;

/// The most positions whose bit flips are checked in one input.
const FLIP_POSITIONS: usize = 256;

fn parse(bytes: &[u8]) -> Option<(Identity, HardState)> {
    match storage::parse(bytes) {
        Ok(parsed) => Some(parsed),
        Err(reason) => {
            assert!(!reason.is_empty() && !reason.contains('\n'), "a refusal is one line: {reason:?}");
            None
        }
    }
}

/// `changed` is `original` with one byte changed: refused, or the same.
fn check_changed(changed: &[u8], original: &(Identity, HardState), at: usize) {
    if let Some(parsed) = parse(changed) {
        assert_eq!(&parsed, original, "byte {at} changed to {:#04x}: accepted as another state", changed[at]);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(accepted) = parse(data) else { return };
    let (identity, state) = &accepted;

    let canonical = storage::encode(identity, state);
    assert_eq!(parse(&canonical).as_ref(), Some(&accepted), "the re-serialised file parses differently");
    assert_eq!(storage::encode(identity, state), canonical, "encoding is not deterministic");

    let mut changed = data.to_vec();
    let stride = data.len().div_ceil(FLIP_POSITIONS).max(1);
    for at in (0..data.len()).step_by(stride) {
        for bit in 0..8 {
            changed[at] ^= 1 << bit;
            check_changed(&changed, &accepted, at);
            changed[at] ^= 1 << bit;
        }
    }
    // Every value at one position, picked by the input's bytes.
    let at = data.iter().fold(data.len(), |h, b| h.wrapping_mul(31).wrapping_add(usize::from(*b))) % data.len();
    for value in 0..=u8::MAX {
        if value != data[at] {
            changed[at] = value;
            check_changed(&changed, &accepted, at);
        }
    }
});

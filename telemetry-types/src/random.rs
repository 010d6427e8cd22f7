//! Randomness for event ids and retry jitter: a per-thread SplitMix64 generator seeded from
//! the standard library's randomly keyed hasher (not for cryptography: event ids only need to
//! be unique, and jitter only needs to spread retries; no system call per id).

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish()
}

/// A random 64-bit number.
pub fn random_u64() -> u64 {
    STATE.with(|s| {
        let (z, next) = splitmix(s.get());
        s.set(next);
        z
    })
}

/// A random number in `0..=max`.
pub fn random_up_to(max: u64) -> u64 {
    if max == u64::MAX {
        random_u64()
    } else {
        random_u64() % (max + 1)
    }
}

/// A random UUID version 4, lower-case hyphenated: 128 bits of this module's generator,
/// stamped and formatted by the `uuid` crate (a lookup table, not `core::fmt`).
///
/// ```
/// let id = telemetry_types::random::uuid_v4();
/// assert_eq!(id.len(), 36);
/// assert_eq!(&id[14..15], "4");
/// ```
pub fn uuid_v4() -> String {
    let mut id = String::with_capacity(36);
    write_uuid_v4(random_u128(), &mut id);
    id
}

/// 128 random bits: an event id drawn now and written out later by [`write_uuid_v4`] (a
/// row waiting to be sent keeps 16 bytes, not a 36-byte string on the heap).
pub fn random_u128() -> u128 {
    STATE.with(|s| {
        let (high, next) = splitmix(s.get());
        let (low, next) = splitmix(next);
        s.set(next);
        (u128::from(high) << 64) | u128::from(low)
    })
}

/// One SplitMix64 step from `state`: the number, and the next state.
#[inline(always)]
fn splitmix(state: u64) -> (u64, u64) {
    let next = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = next;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31), next)
}

/// Appends `bits` to `out` as a UUID version 4, lower-case hyphenated (the version and
/// variant bits stamped over six of the 128): the same bits give the same id.
///
/// ```
/// use telemetry_types::random::write_uuid_v4;
/// let mut id = String::new();
/// write_uuid_v4(7, &mut id);
/// assert_eq!(id, "07000000-0000-4000-8000-000000000000");
/// ```
pub fn write_uuid_v4(bits: u128, out: &mut String) {
    let id = uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid();
    let mut buf = uuid::Uuid::encode_buffer();
    out.push_str(id.hyphenated().encode_lower(&mut buf));
}

/// `bits` as [`write_uuid_v4`] writes it, on the stack: 36 ASCII bytes (hex digits and
/// hyphens, nothing a JSON string would escape), for a writer that copies them as they are.
///
/// ```
/// use telemetry_types::random::{uuid_v4_bytes, write_uuid_v4};
/// let mut id = String::new();
/// write_uuid_v4(42, &mut id);
/// assert_eq!(&uuid_v4_bytes(42)[..], id.as_bytes());
/// ```
pub fn uuid_v4_bytes(bits: u128) -> [u8; 36] {
    let id = uuid::Builder::from_random_bytes(bits.to_le_bytes()).into_uuid();
    let mut out = [0u8; 36];
    id.hyphenated().encode_lower(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn uuids_are_v4_and_unique() {
        let ids: HashSet<String> = (0..10_000).map(|_| uuid_v4()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let b = id.as_bytes();
            assert_eq!(b[8], b'-');
            assert_eq!(b[13], b'-');
            assert_eq!(b[14], b'4');
            assert!(matches!(b[19], b'8' | b'9' | b'a' | b'b'), "{id}");
            assert!(id.chars().all(|c| c == '-' || c.is_ascii_hexdigit()));
        }
    }

    #[test]
    fn bounded_random() {
        assert!((0..1000).all(|_| random_up_to(5) <= 5));
        assert_eq!(random_up_to(0), 0);
        let _ = random_up_to(u64::MAX);
    }
}

//! Raw 64-bit keys of categorical values, for features listed in `data.keyed_features`
//! (tables without a vocabulary, `embedding.kind = "dynamic"`). A serving system that
//! feeds such a model must compute the same key from the same bytes, so the rule is
//! fixed and spelled out in [`key_of`]; changing it invalidates every trained model.

/// FNV-1a's 64-bit offset basis.
const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a's 64-bit prime.
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The key of one categorical value (the bytes of one value as the raw file holds it,
/// after the format's splitting: one element of a multi-valued cell, Avazu's `hour`
/// already cut to its hour of day, a dense-as-categorical value already transformed and
/// printed).
///
/// - If the bytes are a canonical unsigned decimal integer — one or more ASCII digits
///   `0`-`9` and nothing else (no sign, no spaces), no leading `0` unless the value is
///   exactly `"0"`, and a value below 2^64 — the key is that number: `"42"` is 42,
///   `"0"` is 0, `"18446744073709551615"` is `u64::MAX`.
/// - Otherwise the key is the 64-bit FNV-1a hash of the bytes: start from
///   `h = 0xcbf29ce484222325`; for each byte `b` in order, `h = (h ^ b) * 0x100000001b3`
///   modulo 2^64. So `"007"`, `"-1"`, `"1.0"`, `"abc"` and `"18446744073709551616"`
///   (2^64, too large) are hashed, and the empty value (an empty single-valued cell)
///   has the key `0xcbf29ce484222325`.
///
/// A hashed value may share its key with a number or with another value's hash; the
/// table then trains one row for both, as a hashed table would.
pub fn key_of(value: &[u8]) -> u64 {
    canonical_decimal(value).unwrap_or_else(|| fnv1a(value))
}

/// The number a canonical unsigned decimal spells, or None (see [`key_of`]).
fn canonical_decimal(value: &[u8]) -> Option<u64> {
    let leading_zero = value.len() > 1 && value[0] == b'0';
    if value.is_empty() || leading_zero {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// 64-bit FNV-1a of `bytes`.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET_BASIS, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FNV-1a written out independently of `fnv1a`, byte by byte with u128 arithmetic,
    /// so a wrong constant or order in the crate's version shows.
    fn reference_fnv1a(bytes: &[u8]) -> u64 {
        let mut h: u128 = 14_695_981_039_346_656_037; // 0xcbf29ce484222325
        for &b in bytes {
            h ^= u128::from(b);
            h = (h * 1_099_511_628_211) % (1u128 << 64); // 0x100000001b3
        }
        h as u64
    }

    #[test]
    fn canonical_numbers_are_their_value() {
        assert_eq!(key_of(b"0"), 0);
        assert_eq!(key_of(b"7"), 7);
        assert_eq!(key_of(b"42"), 42);
        assert_eq!(key_of(b"1234567890123"), 1_234_567_890_123);
        assert_eq!(key_of(b"18446744073709551615"), u64::MAX);
    }

    #[test]
    fn other_values_are_hashed() {
        for v in [
            &b"007"[..],
            b"00",
            b"01",
            b"-1",
            b"+1",
            b"1.0",
            b" 1",
            b"1 ",
            b"12a",
            b"abc",
            b"68fd1e64",
            b"",
            "é".as_bytes(),
            b"18446744073709551616",
            b"99999999999999999999",
        ] {
            assert_eq!(
                key_of(v),
                reference_fnv1a(v),
                "{:?}",
                String::from_utf8_lossy(v)
            );
        }
        assert_ne!(key_of(b"007"), 7, "leading zeros are not numbers");
        assert_ne!(key_of(b"18446744073709551616"), 0, "2^64 does not wrap");
    }

    #[test]
    fn known_fnv1a_values() {
        assert_eq!(key_of(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(key_of(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(reference_fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(key_of(b"foobar"), 0x8594_4171_f739_67e8);
    }
}

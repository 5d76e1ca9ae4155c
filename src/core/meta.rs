//! A request's raw meta-variables (RFC 3875 §4.1): `(name, value)` byte
//! pairs in the server's order, as FastCGI PARAMS or the CGI process
//! environment give them.
//!
//! All names and values live in one byte buffer and the pairs are offsets
//! into it: decoding a PARAMS stream is one copy and one allocation for the
//! bytes (plus the index), not two allocations per pair — with ~20 pairs a
//! request, that was a fifth of the server's own instructions per request.
//! (Also here: the word loads that the name hash and the environ's string
//! cache share.)

use std::fmt;

/// Raw meta-variables: `(name, value)` byte pairs in the server's order.
#[derive(Clone, Default)]
pub struct MetaVariables {
    bytes: Vec<u8>,
    pairs: Vec<Pair>,
    /// A bit per [`name_hash`] among the names (a one-word Bloom filter): a
    /// lookup of a name that is not there — `HTTP_TRANSFER_ENCODING`,
    /// `CONTENT_LENGTH` of a GET — costs no scan.
    seen: u64,
}

/// Where a pair lives in `bytes`: the name at `start..start + name`, the
/// value right after it, `value` bytes long; the name's hash.
#[derive(Clone, Copy)]
struct Pair {
    start: usize,
    name: usize,
    value: usize,
    hash: u8,
}

/// A name's hash, 0..64: its length and last eight bytes (where the CGI
/// names differ: `HTTP_` and `SERVER_` begin many), multiplied.
#[inline]
pub fn name_hash(name: &[u8]) -> u8 {
    ((last_word(name) ^ name.len() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as u8
}

/// Eight bytes of `b` from `at` (the caller checks `at + 8 <= b.len()`).
#[inline]
pub fn word(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// The last eight bytes of `b` (all of them if fewer) as one number, with
/// no copy of variable length (a `memcpy` call cost more than the rest):
/// overlapping loads of eight, four or single bytes. Different bytes of
/// one length give different numbers.
#[inline]
pub fn last_word(b: &[u8]) -> u64 {
    let n = b.len();
    if n >= 8 {
        word(b, n - 8)
    } else if n >= 4 {
        let four = |at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[at..at + 4]);
            u64::from(u32::from_le_bytes(w))
        };
        four(0) | (four(n - 4) << 32)
    } else {
        b.iter().fold(0, |h, &x| (h << 8) | u64::from(x))
    }
}

/// A pair's name and value in `bytes`.
fn slices<'a>(bytes: &'a [u8], p: &Pair) -> (&'a [u8], &'a [u8]) {
    let name_end = p.start + p.name;
    (
        &bytes[p.start..name_end],
        &bytes[name_end..name_end + p.value],
    )
}

impl MetaVariables {
    /// No pairs yet over `bytes`, which hold them all (a PARAMS stream):
    /// [`MetaVariables::push_in_buffer`] says where each one is.
    pub fn over(bytes: Vec<u8>, pairs: usize) -> MetaVariables {
        MetaVariables {
            bytes,
            pairs: Vec::with_capacity(pairs),
            seen: 0,
        }
    }

    /// Append the pair whose name is `name` bytes at `start` of the buffer,
    /// its value the `value` bytes right after: no copy.
    ///
    /// # Panics
    /// If that runs past the buffer (the decoder checks it first).
    #[inline]
    pub fn push_in_buffer(&mut self, start: usize, name: usize, value: usize) {
        assert!(
            start
                .checked_add(name)
                .and_then(|n| n.checked_add(value))
                .is_some_and(|end| end <= self.bytes.len()),
            "a pair past the end of its buffer"
        );
        let hash = name_hash(&self.bytes[start..start + name]);
        self.seen |= 1 << hash;
        self.pairs.push(Pair {
            start,
            name,
            value,
            hash,
        });
    }

    /// Append a pair (a name given twice is kept twice, in order).
    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(name);
        self.bytes.extend_from_slice(value);
        self.push_in_buffer(start, name.len(), value.len());
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// No pairs at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> + ExactSizeIterator {
        self.pairs.iter().map(|p| slices(&self.bytes, p))
    }

    /// The pairs, in order, each with its name's [`name_hash`].
    pub fn iter_hashed(&self) -> impl Iterator<Item = (&[u8], &[u8], u8)> {
        self.pairs.iter().map(|p| {
            let (name, value) = slices(&self.bytes, p);
            (name, value, p.hash)
        })
    }

    /// The last value of `name`.
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        let hash = name_hash(name);
        if self.seen & (1 << hash) == 0 {
            return None;
        }
        self.pairs
            .iter()
            .rev()
            .filter(|p| p.hash == hash)
            .map(|p| slices(&self.bytes, p))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Keep only the pairs for which `keep` is true (their bytes stay in
    /// the buffer until it is dropped).
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        let bytes = &self.bytes;
        self.pairs.retain(|p| {
            let (name, value) = slices(bytes, p);
            keep(name, value)
        });
    }
}

impl<N: AsRef<[u8]>, V: AsRef<[u8]>> FromIterator<(N, V)> for MetaVariables {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        let mut meta = MetaVariables::default();
        for (name, value) in iter {
            meta.push(name.as_ref(), value.as_ref());
        }
        meta
    }
}

impl PartialEq for MetaVariables {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for MetaVariables {}

impl fmt::Debug for MetaVariables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_keep_their_order_repeats_and_empty_parts() {
        let mut meta: MetaVariables = [
            (&b"A"[..], &b"1"[..]),
            (b"", b""),
            (b"B", b""),
            (b"A", b"2"),
        ]
        .into_iter()
        .collect();
        assert_eq!(meta.len(), 4);
        let pairs: Vec<_> = meta.iter().collect();
        assert_eq!(
            pairs,
            [
                (&b"A"[..], &b"1"[..]),
                (b"", b""),
                (b"B", b""),
                (b"A", b"2")
            ]
        );
        assert_eq!(meta.get(b"A"), Some(&b"2"[..]));
        assert_eq!(meta.get(b"B"), Some(&b""[..]));
        assert_eq!(meta.get(b"C"), None);
        meta.retain(|k, _| k != b"A");
        meta.push(b"A", b"3");
        assert_eq!(
            meta.iter().collect::<Vec<_>>(),
            [(&b""[..], &b""[..]), (b"B", b""), (b"A", b"3")]
        );
        assert!(!meta.is_empty());
        assert!(
            meta.iter_hashed()
                .all(|(k, _, h)| h == name_hash(k) && h < 64)
        );
        let mut over = MetaVariables::over(b"NAMEvalueXy".to_vec(), 2);
        over.push_in_buffer(0, 4, 5);
        over.push_in_buffer(9, 1, 1);
        assert_eq!(over.get(b"NAME"), Some(&b"value"[..]));
        assert_eq!(over.get(b"X"), Some(&b"y"[..]));
        assert_eq!(over.get(b"Xy"), None);
        assert_eq!(format!("{meta:?}"), r#"[("", ""), ("B", ""), ("A", "3")]"#);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn a_pair_past_its_buffer_is_refused() {
        MetaVariables::over(b"abc".to_vec(), 1).push_in_buffer(1, 2, 1);
    }

    /// Lookups find every name among many, whatever their hashes share.
    #[test]
    fn lookups_find_each_of_many_names() {
        let names: Vec<String> = (0..500).map(|i| format!("HTTP_X_{i}")).collect();
        let meta: MetaVariables = names.iter().map(|n| (n.as_str(), n.as_str())).collect();
        for n in &names {
            assert_eq!(meta.get(n.as_bytes()), Some(n.as_bytes()));
        }
        assert_eq!(meta.get(b"HTTP_X_500"), None);
    }
}

//! A request's raw meta-variables (RFC 3875 §4.1): `(name, value)` byte
//! pairs in the server's order, as FastCGI PARAMS or the CGI process
//! environment give them.
//!
//! All names and values live in one byte buffer and the pairs are offsets
//! into it: decoding a PARAMS stream is one copy and one allocation for the
//! bytes (plus the index), not two allocations per pair — with ~20 pairs a
//! request, that was a fifth of the server's own instructions per request.

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
    let n = name.len();
    let last = if n >= 8 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&name[n - 8..]);
        u64::from_le_bytes(w)
    } else {
        name.iter().fold(0, |h, &b| (h << 8) | u64::from(b))
    };
    ((last ^ n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58) as u8
}

impl MetaVariables {
    /// No pairs, room for `pairs` of them and `bytes` bytes of names and values.
    pub fn with_capacity(pairs: usize, bytes: usize) -> MetaVariables {
        MetaVariables {
            bytes: Vec::with_capacity(bytes),
            pairs: Vec::with_capacity(pairs),
            seen: 0,
        }
    }

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
        let hash = name_hash(name);
        self.seen |= 1 << hash;
        self.pairs.push(Pair {
            start,
            name: name.len(),
            value: value.len(),
            hash,
        });
    }

    /// How many pairs.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// No pairs at all.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    fn pair(&self, p: &Pair) -> (&[u8], &[u8]) {
        let name_end = p.start + p.name;
        (
            &self.bytes[p.start..name_end],
            &self.bytes[name_end..name_end + p.value],
        )
    }

    /// The pairs, in order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], &[u8])> + ExactSizeIterator {
        self.pairs.iter().map(|p| self.pair(p))
    }

    /// The pairs, in order, each with its name's [`name_hash`].
    pub fn iter_hashed(&self) -> impl Iterator<Item = (&[u8], &[u8], u8)> {
        self.pairs.iter().map(|p| {
            let (name, value) = self.pair(p);
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
            .map(|p| self.pair(p))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Keep only the pairs for which `keep` is true (their bytes stay in
    /// the buffer until it is dropped).
    pub fn retain(&mut self, mut keep: impl FnMut(&[u8], &[u8]) -> bool) {
        let bytes = &self.bytes;
        self.pairs.retain(|p| {
            let name_end = p.start + p.name;
            keep(
                &bytes[p.start..name_end],
                &bytes[name_end..name_end + p.value],
            )
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

//! Bytes → records (specification §3.3), as a `tokio_util` [`Decoder`] that
//! works on a `BytesMut` and never touches a socket: the fuzz and property
//! tests drive it directly. A wrong version or a stream that ends inside a
//! record is an error naming the fault; the connection is then closed.

use bytes::{Buf, BytesMut};
use tokio_util::codec::Decoder;

use super::record::{HEADER_LEN, Record, VERSION_1};

/// A byte stream that is not FastCGI.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The version byte is not `FCGI_VERSION_1`.
    #[error("bad record version {0} (expected 1)")]
    BadVersion(u8),
    /// The peer closed the connection inside a record.
    #[error("connection closed inside a record ({0} bytes of it received)")]
    Truncated(usize),
    /// Reading the socket failed.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// The record decoder.
#[derive(Debug, Default)]
pub struct RecordDecoder;

impl Decoder for RecordDecoder {
    type Item = Record;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Record>, CodecError> {
        if src.len() < HEADER_LEN {
            if let Some(&version) = src.first()
                && version != VERSION_1
            {
                return Err(CodecError::BadVersion(version));
            }
            src.reserve(HEADER_LEN);
            return Ok(None);
        }
        if src[0] != VERSION_1 {
            return Err(CodecError::BadVersion(src[0]));
        }
        let content_len = usize::from(u16::from_be_bytes([src[4], src[5]]));
        let padding = usize::from(src[6]);
        let total = HEADER_LEN + content_len + padding;
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let kind = src[1];
        let request_id = u16::from_be_bytes([src[2], src[3]]);
        src.advance(HEADER_LEN);
        let content = src.split_to(content_len).freeze();
        src.advance(padding);
        Ok(Some(Record {
            kind,
            request_id,
            content,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Record>, CodecError> {
        match self.decode(src)? {
            Some(record) => Ok(Some(record)),
            None if src.is_empty() => Ok(None),
            None => Err(CodecError::Truncated(src.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fcgi::proto::record::{RecordType, encode_stream};

    #[test]
    fn decodes_records_split_anywhere() {
        let mut wire = BytesMut::new();
        encode_stream(&mut wire, RecordType::Stdin, 7, b"hello");
        encode_stream(&mut wire, RecordType::Params, 7, &[1u8; 100]);
        let bytes = wire.freeze();
        for split in 0..bytes.len() {
            let mut buf = BytesMut::from(&bytes[..split]);
            let mut decoder = RecordDecoder;
            let mut got = Vec::new();
            while let Some(r) = decoder.decode(&mut buf).unwrap() {
                got.push(r);
            }
            buf.extend_from_slice(&bytes[split..]);
            while let Some(r) = decoder.decode(&mut buf).unwrap() {
                got.push(r);
            }
            assert_eq!(got.len(), 2, "split at {split}");
            assert_eq!(&got[0].content[..], b"hello");
            assert_eq!(got[1].content.len(), 100);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn bad_version_and_truncation() {
        let mut buf = BytesMut::from(&[2u8, 1, 0, 1, 0, 0, 0, 0][..]);
        assert!(matches!(
            RecordDecoder.decode(&mut buf),
            Err(CodecError::BadVersion(2))
        ));
        let mut buf = BytesMut::from(&[1u8, 5, 0, 1, 0, 10, 0, 0, 1, 2][..]);
        assert!(RecordDecoder.decode(&mut buf).unwrap().is_none());
        assert!(matches!(
            RecordDecoder.decode_eof(&mut buf),
            Err(CodecError::Truncated(10))
        ));
        let mut buf = BytesMut::from(&[1u8, 5, 0][..]);
        assert!(matches!(
            RecordDecoder.decode_eof(&mut buf),
            Err(CodecError::Truncated(3))
        ));
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use crate::fcgi::proto::params;
    use crate::fcgi::proto::record::{RecordType, encode_stream};
    use proptest::prelude::*;

    proptest! {
        /// Any stream content, split into records and fed in arbitrary
        /// pieces, decodes back to the same bytes.
        #[test]
        fn stream_round_trip(data in proptest::collection::vec(any::<u8>(), 0..200_000), id in 1u16.., cut in 1usize..70_000) {
            let mut wire = BytesMut::new();
            encode_stream(&mut wire, RecordType::Stdout, id, &data);
            let wire = wire.freeze();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for piece in wire.chunks(cut) {
                buf.extend_from_slice(piece);
                while let Some(record) = RecordDecoder.decode(&mut buf).unwrap() {
                    prop_assert_eq!(record.request_id, id);
                    prop_assert_eq!(record.kind, RecordType::Stdout as u8);
                    got.extend_from_slice(&record.content);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, data);
        }

        /// Name-value pairs of any lengths round-trip.
        #[test]
        fn params_round_trip(pairs in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..300), proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let mut out = BytesMut::new();
            for (name, value) in &pairs {
                params::encode_pair(&mut out, name, value);
            }
            prop_assert_eq!(params::decode(&out).unwrap(), pairs.into_iter().collect());
        }

        /// Arbitrary bytes never panic the decoder or the params parser.
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let mut buf = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = RecordDecoder.decode(&mut buf) {}
            let _ = params::decode(&data);
        }
    }
}

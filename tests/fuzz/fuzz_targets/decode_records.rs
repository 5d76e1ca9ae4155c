//! Fuzz the record decoder and the name-value pair parser with arbitrary
//! bytes: they must never panic, and every decoded record must be exactly
//! the bytes its header announces, in order: its type and request id from
//! the header, its content the `contentLength` bytes after it, the padding
//! skipped.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use wsgi_gateway::fcgi::proto::codec::RecordDecoder;
use wsgi_gateway::fcgi::proto::params;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut decoder = RecordDecoder;
    let mut at = 0;
    while let Ok(Some(record)) = decoder.decode(&mut buf) {
        let header = &data[at..at + 8];
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let padding = usize::from(header[6]);
        assert_eq!(header[0], 1);
        assert_eq!(record.kind, header[1]);
        assert_eq!(
            record.request_id,
            u16::from_be_bytes([header[2], header[3]])
        );
        assert_eq!(&record.content[..], &data[at + 8..at + 8 + len]);
        at += 8 + len + padding;
        assert_eq!(buf.len(), data.len() - at, "bytes consumed");
        let _ = params::decode(&record.content);
    }
    let _ = decoder.decode_eof(&mut buf);
    let _ = params::decode(data);
});

//! Fuzz the record decoder and the name-value pair parser with arbitrary
//! bytes: they must never panic, and every decoded record's content must be
//! a slice of the input.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use wsgi_gateway::fcgi::proto::codec::RecordDecoder;
use wsgi_gateway::fcgi::proto::params;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    let mut decoder = RecordDecoder;
    while let Ok(Some(record)) = decoder.decode(&mut buf) {
        assert!(record.content.len() <= 65535);
        let _ = params::decode(&record.content);
    }
    let _ = decoder.decode_eof(&mut buf);
    let _ = params::decode(data);
});

//! One request relayed over a connection to the responder, on the
//! sans-I/O FastCGI codec: BEGIN_REQUEST and PARAMS, STDIN as it is read
//! (kept, for a cold retry), then STDOUT and STDERR as they arrive.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;

use bytes::BytesMut;
use tokio_util::codec::Decoder;

use crate::cgi::body::Spill;
use crate::fcgi::proto::codec::RecordDecoder;
use crate::fcgi::proto::params::encode_pair;
use crate::fcgi::proto::record::{
    RecordType, Role, encode_begin_request, encode_stream, encode_stream_end,
};

/// How a relay ended early.
pub(super) enum Broke {
    /// Before any response byte was written: `kept` is what was read of
    /// the request body; `sent`: the whole request had reached the
    /// responder.
    BeforeResponse {
        why: String,
        kept: Spill,
        sent: bool,
    },
    /// After the response began.
    AfterResponse(String),
    /// Writing the response failed (the client or server went away).
    Output(io::Error),
}

/// One request over `conn`: BEGIN_REQUEST and PARAMS, then STDIN as it is
/// read; then STDOUT to `out` as it arrives and STDERR to our stderr, up
/// to END_REQUEST.
pub(super) fn relay(
    mut conn: UnixStream,
    meta: &crate::core::meta::MetaVariables,
    source: &mut dyn Read,
    length: u64,
    out: &mut File,
) -> Result<(), Broke> {
    let mut replay = Spill::default();
    let mut wire = BytesMut::with_capacity(16 * 1024);
    encode_begin_request(&mut wire, 1, Role::Responder, false);
    let mut params = BytesMut::new();
    for (name, value) in meta.iter() {
        encode_pair(&mut params, name, value);
    }
    encode_stream(&mut wire, RecordType::Params, 1, &params);
    encode_stream_end(&mut wire, RecordType::Params, 1);

    // The request, body as it is read (the responder receives it whole
    // before the app runs: nothing to read back meanwhile).
    let mut left = length;
    let mut chunk = vec![0u8; 64 * 1024];
    let sending: io::Result<()> = (|| {
        loop {
            if left == 0 {
                encode_stream_end(&mut wire, RecordType::Stdin, 1);
                return conn.write_all(&wire);
            }
            let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match source.read(&mut chunk[..want]) {
                Ok(0) => {
                    // A body shorter than its CONTENT_LENGTH: the cold path
                    // would see the same short body.
                    left = 0;
                    continue;
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::other(format!("reading the request body: {e}"))),
            };
            replay.keep(&chunk[..n])?;
            left -= n as u64;
            encode_stream(&mut wire, RecordType::Stdin, 1, &chunk[..n]);
            if wire.len() >= 64 * 1024 {
                conn.write_all(&wire)?;
                wire.clear();
            }
        }
    })();
    if let Err(e) = sending {
        return Err(Broke::BeforeResponse {
            why: format!("sending the request: {e}"),
            kept: replay,
            sent: false,
        });
    }

    let mut input = BytesMut::with_capacity(64 * 1024);
    let mut began = false;
    let mut decoder = RecordDecoder;
    let fail = |why: String, began: bool, replay: Spill| match began {
        true => Broke::AfterResponse(why),
        false => Broke::BeforeResponse {
            why,
            kept: replay,
            sent: true,
        },
    };
    loop {
        let record = match decoder.decode(&mut input) {
            Ok(Some(record)) => record,
            Ok(None) => {
                input.reserve(64 * 1024);
                let spare = input.spare_capacity_mut();
                // SAFETY: read() only writes into the spare capacity, and
                // only the `n` bytes it reports are marked initialized.
                let buf = unsafe {
                    std::slice::from_raw_parts_mut(spare.as_mut_ptr().cast::<u8>(), spare.len())
                };
                match conn.read(buf) {
                    Ok(0) => {
                        return Err(fail(
                            "the responder closed the connection before END_REQUEST".into(),
                            began,
                            replay,
                        ));
                    }
                    // SAFETY: read() initialized `n` bytes of the spare capacity.
                    Ok(n) => unsafe { input.set_len(input.len() + n) },
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(fail(format!("reading: {e}"), began, replay)),
                }
                continue;
            }
            Err(e) => return Err(fail(e.to_string(), began, replay)),
        };
        match RecordType::from_u8(record.kind) {
            Some(RecordType::Stdout) if !record.content.is_empty() => {
                began = true;
                out.write_all(&record.content).map_err(Broke::Output)?;
            }
            Some(RecordType::Stderr) if !record.content.is_empty() => {
                let _ = io::stderr().write_all(&record.content);
            }
            Some(RecordType::EndRequest) => {
                if !began {
                    return Err(fail("END_REQUEST without a response".into(), began, replay));
                }
                return Ok(());
            }
            _ => {}
        }
    }
}

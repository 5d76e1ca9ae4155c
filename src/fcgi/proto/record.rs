//! FastCGI 1.0 records (specification §3.3, §8): the 8-byte header, record
//! types, the fixed bodies (BEGIN_REQUEST, END_REQUEST, UNKNOWN_TYPE), and
//! encoding of outgoing records with content split at 65535 bytes and padded
//! to a multiple of 8. Pure bytes: no I/O.

use bytes::{BufMut, Bytes, BytesMut};

/// `FCGI_VERSION_1`.
pub const VERSION_1: u8 = 1;
/// Size of a record header.
pub const HEADER_LEN: usize = 8;
/// Largest content of one record.
pub const MAX_CONTENT: usize = 65535;
/// `FCGI_NULL_REQUEST_ID`: management records.
pub const NULL_REQUEST_ID: u16 = 0;
/// `FCGI_KEEP_CONN` in BEGIN_REQUEST flags.
pub const KEEP_CONN: u8 = 1;

/// Record types (§8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordType {
    /// `FCGI_BEGIN_REQUEST`
    BeginRequest = 1,
    /// `FCGI_ABORT_REQUEST`
    AbortRequest = 2,
    /// `FCGI_END_REQUEST`
    EndRequest = 3,
    /// `FCGI_PARAMS`
    Params = 4,
    /// `FCGI_STDIN`
    Stdin = 5,
    /// `FCGI_STDOUT`
    Stdout = 6,
    /// `FCGI_STDERR`
    Stderr = 7,
    /// `FCGI_DATA`
    Data = 8,
    /// `FCGI_GET_VALUES`
    GetValues = 9,
    /// `FCGI_GET_VALUES_RESULT`
    GetValuesResult = 10,
    /// `FCGI_UNKNOWN_TYPE`
    UnknownType = 11,
}

impl RecordType {
    /// The known type for a wire value.
    pub fn from_u8(value: u8) -> Option<RecordType> {
        use RecordType::*;
        Some(match value {
            1 => BeginRequest,
            2 => AbortRequest,
            3 => EndRequest,
            4 => Params,
            5 => Stdin,
            6 => Stdout,
            7 => Stderr,
            8 => Data,
            9 => GetValues,
            10 => GetValuesResult,
            11 => UnknownType,
            _ => return None,
        })
    }
}

/// Roles (§6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `FCGI_RESPONDER`
    Responder,
    /// `FCGI_AUTHORIZER`
    Authorizer,
    /// `FCGI_FILTER`
    Filter,
    /// Anything else.
    Unknown(u16),
}

impl Role {
    /// The role for a wire value.
    pub fn from_u16(value: u16) -> Role {
        match value {
            1 => Role::Responder,
            2 => Role::Authorizer,
            3 => Role::Filter,
            other => Role::Unknown(other),
        }
    }

    /// The wire value.
    pub fn to_u16(self) -> u16 {
        match self {
            Role::Responder => 1,
            Role::Authorizer => 2,
            Role::Filter => 3,
            Role::Unknown(other) => other,
        }
    }
}

/// `protocolStatus` of END_REQUEST (§5.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ProtocolStatus {
    /// `FCGI_REQUEST_COMPLETE`
    RequestComplete = 0,
    /// `FCGI_CANT_MPX_CONN`
    CantMpxConn = 1,
    /// `FCGI_OVERLOADED`
    Overloaded = 2,
    /// `FCGI_UNKNOWN_ROLE`
    UnknownRole = 3,
}

/// A decoded record. `kind` is the raw type so unknown types survive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The raw record type.
    pub kind: u8,
    /// The request id (0 for management records).
    pub request_id: u16,
    /// The content, padding removed.
    pub content: Bytes,
}

/// The body of a BEGIN_REQUEST record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BeginRequest {
    /// The role.
    pub role: Role,
    /// `FCGI_KEEP_CONN` was set.
    pub keep_conn: bool,
}

impl BeginRequest {
    /// Parse the 8-byte body; `None` if it is too short.
    pub fn parse(content: &[u8]) -> Option<BeginRequest> {
        if content.len() < 8 {
            return None;
        }
        Some(BeginRequest {
            role: Role::from_u16(u16::from_be_bytes([content[0], content[1]])),
            keep_conn: content[2] & KEEP_CONN != 0,
        })
    }
}

fn put_header(out: &mut BytesMut, kind: u8, request_id: u16, content_len: usize, padding: usize) {
    out.put_u8(VERSION_1);
    out.put_u8(kind);
    out.put_u16(request_id);
    out.put_u16(content_len as u16);
    out.put_u8(padding as u8);
    out.put_u8(0);
}

/// Padding that brings `len` to a multiple of 8 (§3.3 recommends it).
pub fn padding_for(len: usize) -> usize {
    (8 - len % 8) % 8
}

/// Append one record header for `content_len` bytes of content that the
/// caller sends itself (e.g. with `sendfile`), followed by `padding` bytes.
pub fn encode_header(
    out: &mut BytesMut,
    kind: RecordType,
    request_id: u16,
    content_len: usize,
) -> usize {
    debug_assert!(content_len <= MAX_CONTENT);
    let padding = padding_for(content_len);
    put_header(out, kind as u8, request_id, content_len, padding);
    padding
}

/// Append a stream's data as as many records as needed (never an empty one:
/// an empty record ends the stream, see [`encode_stream_end`]).
pub fn encode_stream(out: &mut BytesMut, kind: RecordType, request_id: u16, data: &[u8]) {
    for chunk in data.chunks(MAX_CONTENT) {
        let padding = encode_header(out, kind, request_id, chunk.len());
        out.put_slice(chunk);
        out.put_bytes(0, padding);
    }
}

/// Append the empty record that closes a stream.
pub fn encode_stream_end(out: &mut BytesMut, kind: RecordType, request_id: u16) {
    put_header(out, kind as u8, request_id, 0, 0);
}

/// Append END_REQUEST.
pub fn encode_end_request(
    out: &mut BytesMut,
    request_id: u16,
    app_status: u32,
    status: ProtocolStatus,
) {
    put_header(out, RecordType::EndRequest as u8, request_id, 8, 0);
    out.put_u32(app_status);
    out.put_u8(status as u8);
    out.put_bytes(0, 3);
}

/// Append BEGIN_REQUEST (a client's first record of a request).
pub fn encode_begin_request(out: &mut BytesMut, request_id: u16, role: Role, keep_conn: bool) {
    put_header(out, RecordType::BeginRequest as u8, request_id, 8, 0);
    out.put_u16(role.to_u16());
    out.put_u8(if keep_conn { KEEP_CONN } else { 0 });
    out.put_bytes(0, 5);
}

/// Append UNKNOWN_TYPE for an unknown management record type.
pub fn encode_unknown_type(out: &mut BytesMut, kind: u8) {
    put_header(out, RecordType::UnknownType as u8, NULL_REQUEST_ID, 8, 0);
    out.put_u8(kind);
    out.put_bytes(0, 7);
}

/// Append a management record with `content` (GET_VALUES_RESULT).
pub fn encode_management(out: &mut BytesMut, kind: RecordType, content: &[u8]) {
    let padding = encode_header(out, kind, NULL_REQUEST_ID, content.len().min(MAX_CONTENT));
    out.put_slice(&content[..content.len().min(MAX_CONTENT)]);
    out.put_bytes(0, padding);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_request_bytes_from_the_spec_layout() {
        let mut out = BytesMut::new();
        encode_end_request(&mut out, 1, 0, ProtocolStatus::RequestComplete);
        assert_eq!(&out[..], &[1, 3, 0, 1, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mut out = BytesMut::new();
        encode_end_request(&mut out, 0x0102, 0x0a0b0c0d, ProtocolStatus::CantMpxConn);
        assert_eq!(
            &out[..],
            &[1, 3, 1, 2, 0, 8, 0, 0, 0x0a, 0x0b, 0x0c, 0x0d, 1, 0, 0, 0]
        );
    }

    #[test]
    fn streams_split_at_65535_and_pad_to_8() {
        let mut out = BytesMut::new();
        encode_stream(&mut out, RecordType::Stdout, 1, &vec![7u8; 65536]);
        // first record: 65535 bytes + 1 padding; second: 1 byte + 7 padding
        assert_eq!(&out[..8], &[1, 6, 0, 1, 0xff, 0xff, 1, 0]);
        let second = 8 + 65535 + 1;
        assert_eq!(&out[second..second + 8], &[1, 6, 0, 1, 0, 1, 7, 0]);
        assert_eq!(out.len(), second + 8 + 1 + 7);
        let mut out = BytesMut::new();
        encode_stream(&mut out, RecordType::Stdout, 1, b"");
        assert!(out.is_empty());
        encode_stream_end(&mut out, RecordType::Stdout, 1);
        assert_eq!(&out[..], &[1, 6, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn begin_request_and_unknown_type() {
        let b = BeginRequest::parse(&[0, 1, 1, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            b,
            BeginRequest {
                role: Role::Responder,
                keep_conn: true
            }
        );
        let b = BeginRequest::parse(&[0, 2, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(
            b,
            BeginRequest {
                role: Role::Authorizer,
                keep_conn: false
            }
        );
        assert_eq!(
            BeginRequest::parse(&[0, 3, 0, 0, 0, 0, 0, 0]).unwrap().role,
            Role::Filter
        );
        assert!(BeginRequest::parse(&[0, 1]).is_none());
        let mut out = BytesMut::new();
        encode_unknown_type(&mut out, 42);
        assert_eq!(
            &out[..],
            &[1, 11, 0, 0, 0, 8, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}

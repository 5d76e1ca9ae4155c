//! FastCGI name-value pairs (specification §3.4): lengths of 1 byte (< 128)
//! or 4 bytes (high bit set, 31 bits), then the name and value bytes. Used by
//! PARAMS, GET_VALUES and GET_VALUES_RESULT. Lengths are checked against the
//! remaining input with overflow-safe arithmetic.

use bytes::{BufMut, BytesMut};

/// A name-value pair stream that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParamsError {
    /// A length or the data it announces runs past the end of the stream.
    #[error("name-value pair truncated at byte {0}")]
    Truncated(usize),
}

fn read_length(data: &[u8], at: usize) -> Result<(usize, usize), ParamsError> {
    let first = *data.get(at).ok_or(ParamsError::Truncated(at))?;
    if first & 0x80 == 0 {
        return Ok((usize::from(first), at + 1));
    }
    let bytes = data.get(at..at + 4).ok_or(ParamsError::Truncated(at))?;
    let length = u32::from_be_bytes([bytes[0] & 0x7f, bytes[1], bytes[2], bytes[3]]);
    Ok((length as usize, at + 4))
}

/// Decode a complete name-value pair stream.
pub fn decode(data: &[u8]) -> Result<crate::core::meta::MetaVariables, ParamsError> {
    // Each pair stays where it is in one copy of the stream.
    let mut pairs = crate::core::meta::MetaVariables::over(data.to_vec(), data.len() / 16 + 1);
    let mut at = 0;
    while at < data.len() {
        let (name_len, next) = read_length(data, at)?;
        let (value_len, next) = read_length(data, next)?;
        let name_end = next
            .checked_add(name_len)
            .ok_or(ParamsError::Truncated(at))?;
        let value_end = name_end
            .checked_add(value_len)
            .ok_or(ParamsError::Truncated(at))?;
        if value_end > data.len() {
            return Err(ParamsError::Truncated(at));
        }
        pairs.push_in_buffer(next, name_len, value_len);
        at = value_end;
    }
    Ok(pairs)
}

fn put_length(out: &mut BytesMut, length: usize) {
    if length < 128 {
        out.put_u8(length as u8);
    } else {
        out.put_u32((length as u32) | 0x8000_0000);
    }
}

/// Encode one name-value pair.
pub fn encode_pair(out: &mut BytesMut, name: &[u8], value: &[u8]) {
    put_length(out, name.len());
    put_length(out, value.len());
    out.put_slice(name);
    out.put_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples_one_and_four_byte_lengths() {
        // §3.4: nameLength 11 (1 byte), valueLength 3
        let data = b"\x0b\x03SERVER_PORT123";
        assert_eq!(
            decode(data).unwrap().iter().collect::<Vec<_>>(),
            [(&b"SERVER_PORT"[..], &b"123"[..])]
        );
        // a 4-byte value length: 0x80 0x00 0x01 0x00 = 256
        let mut data = vec![0x01, 0x80, 0x00, 0x01, 0x00, b'X'];
        data.extend(std::iter::repeat_n(b'v', 256));
        assert_eq!(decode(&data).unwrap().get(b"X").map(<[u8]>::len), Some(256));
        let mut out = BytesMut::new();
        encode_pair(&mut out, b"X", &vec![b'v'; 256]);
        assert_eq!(&out[..], &data[..]);
    }

    #[test]
    fn truncation_and_overflow_are_errors() {
        assert!(decode(b"\x0b").is_err());
        assert!(decode(b"\x0b\x03SERVER").is_err());
        assert!(decode(b"\x80\x00").is_err());
        // lengths near 2^31 must not overflow or allocate
        assert!(decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, b'a']).is_err());
        assert!(decode(b"").unwrap().is_empty());
        assert_eq!(
            decode(b"\x00\x00").unwrap().iter().collect::<Vec<_>>(),
            [(&b""[..], &b""[..])]
        );
    }
}

//! The CGI response header block (RFC 3875 §6): a `Status:` line, the
//! application's headers, a blank line. Pure bytes, written once per
//! response as [`crate::core::response::HeadBuilder`] validates each part
//! (so nothing here can inject a header) and kept in the [`Head`].

use crate::core::response::Head;

/// The status line (`status` validated: `"404 Not Found"`).
pub fn push_status(block: &mut Vec<u8>, status: &str) {
    block.extend_from_slice(b"Status: ");
    push_latin1(status, block);
    block.extend_from_slice(b"\r\n");
}

/// A header line (validated: the name a token, so ASCII; the value
/// latin-1 text).
pub fn push_header(block: &mut Vec<u8>, name: &str, value: &str) {
    block.reserve(name.len() + value.len() + 4);
    block.extend_from_slice(name.as_bytes());
    block.extend_from_slice(b": ");
    push_latin1(value, block);
    block.extend_from_slice(b"\r\n");
}

/// The blank line that ends the block.
pub fn push_end(block: &mut Vec<u8>) {
    block.extend_from_slice(b"\r\n");
}

/// The header block for `head` (empty when there is none to send), the
/// first bytes every front end writes.
pub fn head_block(head: Option<&Head>) -> &[u8] {
    head.map_or(&[], Head::block)
}

/// Encode validated latin-1 text back to its bytes.
fn push_latin1(text: &str, out: &mut Vec<u8>) {
    if text.is_ascii() {
        out.extend_from_slice(text.as_bytes());
    } else {
        out.extend(
            text.chars()
                .map(|c| u8::try_from(u32::from(c)).unwrap_or(b'?')),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::response::make_head;

    #[test]
    fn header_block_bytes() {
        let head = make_head(
            "404 Not Found",
            vec![
                ("Content-Type".into(), "text/plain".into()),
                ("X-Name".into(), "caf\u{e9}".into()),
            ],
        )
        .unwrap();
        assert_eq!(
            head_block(Some(&head)),
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Name: caf\xe9\r\n\r\n"
        );
        assert!(head_block(None).is_empty());
    }
}

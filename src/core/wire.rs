//! The CGI response header block (RFC 3875 §6): a `Status:` line, the
//! application's headers, a blank line. Pure bytes; the values were already
//! validated by [`crate::core::response`], so nothing here can inject a header.

use crate::core::response::Head;

/// Append the CGI header block for `head` to `out`.
pub fn cgi_head(head: &Head, out: &mut Vec<u8>) {
    out.extend_from_slice(b"Status: ");
    push_latin1(&head.status, out);
    out.extend_from_slice(b"\r\n");
    for (name, value) in &head.headers {
        push_latin1(name, out);
        out.extend_from_slice(b": ");
        push_latin1(value, out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The header block for `head` (empty when there is none to send), the
/// first bytes every front end writes.
pub fn head_block(head: Option<&Head>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(head) = head {
        out.reserve(256);
        cgi_head(head, &mut out);
    }
    out
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
        let mut out = Vec::new();
        cgi_head(&head, &mut out);
        assert_eq!(
            out,
            b"Status: 404 Not Found\r\nContent-Type: text/plain\r\nX-Name: caf\xe9\r\n\r\n"
                .to_vec()
        );
    }
}

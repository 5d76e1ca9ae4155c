//! The request body before the app runs (both paths of `wsgi-cgi`: the
//! relay of warm mode and the cold path): a declared length checked against
//! `--max-body-size`; a chunked one (Apache mod_cgi/mod_cgid: no
//! CONTENT_LENGTH, the decoded body on stdin) read whole and measured, as
//! nginx does before FastCGI, so that the app sees a CONTENT_LENGTH.

use std::io::{self, Read, Seek, Write};

use crate::core::request::{is_chunked, meta_value, set_measured_length};

/// Bodies up to this size stay in memory; larger ones go to an
/// unlinked temporary file in `$TMPDIR`.
const IN_MEMORY: usize = 1024 * 1024;

/// Why a request is refused before the app runs.
pub struct Refusal {
    /// The HTTP status to answer (400, 413).
    pub status: u16,
    /// What the log says.
    pub message: String,
}

/// `Some(body)`: a chunked body, read whole (its CONTENT_LENGTH added
/// to `meta`); `None`: the app reads stdin as the CONTENT_LENGTH says.
pub fn receive(
    meta: &mut Vec<(Vec<u8>, Vec<u8>)>,
    max: Option<u64>,
) -> Result<Option<Box<dyn Read + Send>>, Refusal> {
    let too_large = |what: String| Refusal {
        status: 413,
        message: format!(
            "{what} is over --max-body-size ({} bytes)",
            max.unwrap_or(0)
        ),
    };
    if let Some(length) = meta_value(meta, b"CONTENT_LENGTH").filter(|v| !v.is_empty()) {
        // (An invalid one is the environ's to refuse, with 400.)
        let declared = std::str::from_utf8(length)
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok());
        if let (Some(declared), Some(max)) = (declared, max)
            && declared > max
        {
            return Err(too_large(format!("the request body ({declared} bytes)")));
        }
        return Ok(None);
    }
    if !is_chunked(meta) {
        return Ok(None);
    }
    let (body, len) = read_all(&mut io::stdin().lock(), max).map_err(|e| match e {
        Stop::TooLarge => too_large("the chunked request body".into()),
        Stop::Io(e) => Refusal {
            status: 400,
            message: format!("cannot read the chunked request body: {e}"),
        },
    })?;
    set_measured_length(meta, len);
    Ok(Some(body))
}

enum Stop {
    TooLarge,
    Io(io::Error),
}

/// Everything `input` holds, in memory or (beyond [`IN_MEMORY`]) in a
/// temporary file; more than `max` bytes: [`Stop::TooLarge`].
fn read_all(input: &mut dyn Read, max: Option<u64>) -> Result<(Box<dyn Read + Send>, u64), Stop> {
    let mut memory = Vec::new();
    let mut file: Option<std::fs::File> = None;
    let mut len = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match input.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Stop::Io(e)),
        };
        len += n as u64;
        if max.is_some_and(|max| len > max) {
            return Err(Stop::TooLarge);
        }
        match &mut file {
            Some(file) => file.write_all(&chunk[..n]).map_err(Stop::Io)?,
            None if memory.len() + n <= IN_MEMORY => memory.extend_from_slice(&chunk[..n]),
            None => {
                let mut spill = crate::fcgi::spool::temp_file(None).map_err(Stop::Io)?;
                spill.write_all(&memory).map_err(Stop::Io)?;
                spill.write_all(&chunk[..n]).map_err(Stop::Io)?;
                memory = Vec::new();
                file = Some(spill);
            }
        }
    }
    Ok(match file {
        Some(mut file) => {
            file.rewind().map_err(Stop::Io)?;
            (Box::new(file), len)
        }
        None => (Box::new(io::Cursor::new(memory)), len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_read_whole_in_memory_or_spilled_and_bounded() {
        for size in [0usize, 10, IN_MEMORY + 1] {
            let data: Vec<u8> = (0..size).map(|i| i as u8).collect();
            let (mut body, len) = match read_all(&mut data.as_slice(), None) {
                Ok(got) => got,
                Err(_) => panic!("{size}: refused"),
            };
            assert_eq!(len, size as u64);
            let mut back = Vec::new();
            body.read_to_end(&mut back).unwrap();
            assert!(back == data, "{size}: not the same bytes");
        }
        assert!(matches!(
            read_all(&mut [0u8; 11].as_slice(), Some(10)),
            Err(Stop::TooLarge)
        ));
        assert!(read_all(&mut [0u8; 10].as_slice(), Some(10)).is_ok());
    }
}

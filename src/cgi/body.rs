//! The request body before the app runs (both paths of `wsgi-cgi`: the
//! relay of warm mode and the cold path): a declared length checked against
//! `--max-body-size`; a chunked one (Apache mod_cgi/mod_cgid: no
//! CONTENT_LENGTH, the decoded body on stdin) read whole and measured, as
//! nginx does before FastCGI, so that the app sees a CONTENT_LENGTH.

use std::io::{self, Read, Seek, Write};

use crate::core::request::{is_chunked, set_measured_length};

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
    meta: &mut crate::core::meta::MetaVariables,
    max: Option<u64>,
) -> Result<Option<Box<dyn Read + Send>>, Refusal> {
    let too_large = |what: String| Refusal {
        status: 413,
        message: format!(
            "{what} is over --max-body-size ({} bytes)",
            max.unwrap_or(0)
        ),
    };
    if let Some(length) = meta.get(b"CONTENT_LENGTH").filter(|v| !v.is_empty()) {
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
    let mut spill = Spill::default();
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
        spill.keep(&chunk[..n]).map_err(Stop::Io)?;
    }
    Ok((spill.then(Box::new(io::empty())), len))
}

/// Body bytes kept as they are read: in memory up to [`IN_MEMORY`], then
/// in an unlinked temporary file in `$TMPDIR` (a chunked body read whole;
/// what warm mode's relay read, for a cold retry).
#[derive(Default)]
pub struct Spill {
    memory: Vec<u8>,
    file: Option<std::fs::File>,
}

impl Spill {
    /// Keep `data` after what was kept before.
    pub fn keep(&mut self, data: &[u8]) -> io::Result<()> {
        if let Some(file) = &mut self.file {
            return file.write_all(data);
        }
        if self.memory.len() + data.len() <= IN_MEMORY {
            self.memory.extend_from_slice(data);
            return Ok(());
        }
        let mut file = crate::fcgi::spool::temp_file(None)?;
        file.write_all(&self.memory)?;
        file.write_all(data)?;
        self.memory = Vec::new();
        self.file = Some(file);
        Ok(())
    }

    /// What was kept, then `rest`.
    pub fn then(self, rest: Box<dyn Read + Send>) -> Box<dyn Read + Send> {
        match self.file {
            Some(mut file) => match file.rewind() {
                Ok(()) => Box::new(file.chain(rest)),
                // (Cannot happen to a regular file; the body is then short.)
                Err(_) => rest,
            },
            None => Box::new(io::Cursor::new(self.memory).chain(rest)),
        }
    }
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

    #[test]
    fn a_spill_gives_back_what_was_kept_then_the_rest() {
        for size in [10usize, IN_MEMORY + 10] {
            let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut replay = Spill::default();
            replay.keep(&data[..size / 2]).unwrap();
            replay.keep(&data[size / 2..size - 3]).unwrap();
            let rest: Box<dyn Read + Send> = Box::new(io::Cursor::new(data[size - 3..].to_vec()));
            let mut back = Vec::new();
            replay.then(rest).read_to_end(&mut back).unwrap();
            assert!(back == data, "{size}");
        }
    }
}

//! A request body received before the app starts: in memory up to
//! `--body-buffer-size`, beyond that in an unlinked temporary file
//! (`--body-temp-dir`), so a slow client holds no app thread and a large
//! upload holds no memory. The app then reads it at memory (or page-cache)
//! speed.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::job::Body;

/// A body being received.
pub struct Spool {
    memory: VecDeque<Bytes>,
    in_memory: usize,
    file: Option<File>,
    /// Bytes received.
    pub len: u64,
    limit: usize,
    dir: Option<PathBuf>,
}

impl Spool {
    /// A spool holding up to `limit` bytes in memory, then spilling to `dir`.
    pub fn new(limit: usize, dir: Option<PathBuf>) -> Spool {
        Spool {
            memory: VecDeque::new(),
            in_memory: 0,
            file: None,
            len: 0,
            limit,
            dir,
        }
    }

    /// Add the content of a STDIN record.
    pub fn push(&mut self, data: Bytes) -> io::Result<()> {
        self.len += data.len() as u64;
        if let Some(file) = &mut self.file {
            return file.write_all(&data);
        }
        if self.in_memory + data.len() <= self.limit {
            self.in_memory += data.len();
            self.memory.push_back(data);
            return Ok(());
        }
        let mut file = temp_file(self.dir.as_deref())?;
        for chunk in self.memory.drain(..) {
            file.write_all(&chunk)?;
        }
        file.write_all(&data)?;
        self.in_memory = 0;
        self.file = Some(file);
        Ok(())
    }

    /// The complete body, ready to read from its start.
    pub fn finish(self) -> io::Result<Body> {
        match self.file {
            Some(mut file) => {
                file.rewind()?;
                Ok(Body::File(file))
            }
            None => Ok(Body::Memory(self.memory)),
        }
    }
}

/// An unlinked temporary file in `dir` (default `$TMPDIR`, else `/tmp`):
/// `O_TMPFILE` where the file system has it, else created and unlinked at once.
pub fn temp_file(dir: Option<&Path>) -> io::Result<File> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let dir = dir.map_or_else(std::env::temp_dir, Path::to_path_buf);
    let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    match open(&dir, flags, Mode::from_bits_truncate(0o600)) {
        Ok(fd) => return Ok(File::from(fd)),
        Err(
            nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EISDIR | nix::errno::Errno::EINVAL,
        ) => {}
        Err(e) => {
            return Err(io::Error::new(
                io::Error::from(e).kind(),
                format!("temporary file in {}: {e}", dir.display()),
            ));
        }
    }
    for attempt in 0u32..100 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = dir.join(format!(
            ".wsgi-body-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        let flags = OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC;
        match open(&path, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => {
                let _ = std::fs::remove_file(&path);
                return Ok(File::from(fd));
            }
            Err(nix::errno::Errno::EEXIST) => continue,
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("temporary file in {}: {e}", dir.display()),
                ));
            }
        }
    }
    Err(io::Error::other(format!(
        "no temporary file could be made in {}",
        dir.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn small_bodies_stay_in_memory_and_large_ones_spill_whole() {
        let mut spool = Spool::new(10, None);
        spool.push(Bytes::from_static(b"hello ")).unwrap();
        spool.push(Bytes::from_static(b"you")).unwrap();
        let mut body = spool.finish().unwrap();
        assert!(matches!(body, Body::Memory(_)));
        let mut text = String::new();
        body.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello you");

        let mut spool = Spool::new(10, None);
        for piece in ["hello ", "there, ", "world"] {
            spool.push(Bytes::from(piece)).unwrap();
        }
        assert_eq!(spool.len, 18);
        let mut body = spool.finish().unwrap();
        assert!(matches!(body, Body::File(_)));
        let mut text = String::new();
        body.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello there, world");
    }

    #[test]
    fn temp_files_leave_no_name_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = temp_file(Some(dir.path())).unwrap();
        file.write_all(b"x").unwrap();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}

//! SHA-256 for the tests, once (the sha2 crate): of bytes, or of a stream
//! fed piece by piece (nothing kept in memory).

use sha2::Digest;

/// SHA-256 of `data`, in hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&sha2::Sha256::digest(data))
}

/// SHA-256 of a stream of bytes.
#[derive(Default)]
pub struct Sha256(sha2::Sha256);

impl Sha256 {
    pub fn new() -> Sha256 {
        Sha256::default()
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The digest in hex.
    pub fn hex(self) -> String {
        hex(&self.0.finalize())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

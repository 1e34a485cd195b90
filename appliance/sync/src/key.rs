//! The fleet's shared key.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ConfigError;

type HmacSha256 = Hmac<Sha256>;

/// The fleet's shared secret, which keys the HMAC-SHA256 tag of every
/// datagram.
///
/// Its [`Debug`](std::fmt::Debug) output does not show the key.
#[derive(Clone)]
pub struct Key {
    /// HMAC state with the key already absorbed, cloned for each datagram.
    mac: HmacSha256,
}

impl Key {
    /// The shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 16;

    /// A key from its bytes; at least [`Key::MIN_LEN`] of them.
    pub fn new(bytes: &[u8]) -> Result<Key, ConfigError> {
        if bytes.len() < Self::MIN_LEN {
            return Err(ConfigError::KeyTooShort(bytes.len()));
        }
        let mac =
            HmacSha256::new_from_slice(bytes).map_err(|_| ConfigError::KeyTooShort(bytes.len()))?;
        Ok(Key { mac })
    }

    /// The 32-byte tag of `data`.
    pub(crate) fn tag(&self, data: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// Whether `tag` is the tag of `data`, compared in constant time.
    pub(crate) fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        let mut mac = self.mac.clone();
        mac.update(data);
        mac.verify_slice(tag).is_ok()
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

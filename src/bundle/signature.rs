//! The optional signature member, `pinbundle.json.minisig` (bundle-format.md, section 8.3).
//!
//! The bundle layer only finds and reads its bytes; `crate::sign` parses and checks them.

use super::format::{MAX_SIGNATURE_LEN, SIGNATURE_PATH};
use super::{Bundle, Error};

impl Bundle {
    /// The content of `pinbundle.json.minisig`, or `None` when the bundle is not signed. The
    /// bytes are checked against the member's digest like any member's.
    pub fn signature_bytes(&self) -> Result<Option<Vec<u8>>, Error> {
        let Some(m) = self.member(SIGNATURE_PATH) else {
            return Ok(None);
        };
        if m.size > MAX_SIGNATURE_LEN {
            return Err(Error::BadMember {
                path: self.path().to_path_buf(),
                member: m.path.clone(),
                detail: format!(
                    "{} bytes is too large for a signature (at most {MAX_SIGNATURE_LEN})",
                    m.size
                ),
            });
        }
        self.read_member(m).map(Some)
    }
}

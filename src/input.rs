//! Small local files a person names (signing keys, password files, auth files, CA files,
//! reference lists): regular files only, read with a hard cap.
//!
//! A path may name a FIFO with no writer (an open would block forever), a device such as
//! `/dev/zero` (`metadata().len()` is 0, and reading never ends), or a file far larger than
//! any key. So the file is opened with `O_NONBLOCK` (which an open of a FIFO honours and a
//! regular file ignores), checked with `fstat` on that same descriptor, and read through a
//! limit. Errors are `std::io::Error`s; callers name the path.

use std::io::Read as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Why [`open_regular`] refused a path: what it is instead (`a FIFO`, `a device`, …). It is
/// the inner error of the `InvalidInput` error [`open_regular`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotRegular(pub &'static str);

impl std::fmt::Display for NotRegular {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, not a regular file", self.0)
    }
}

impl std::error::Error for NotRegular {}

/// Open `path` for reading if it is a regular file, without ever blocking on a FIFO (or
/// taking a terminal as the controlling one).
pub fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::FileTypeExt as _;
    // std::fs deliberately: callers wrap the error in one that names the path.
    #[allow(clippy::disallowed_methods)]
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOCTTY).bits() as i32)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        let ft = meta.file_type();
        let kind = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "something else"
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            NotRegular(kind),
        ));
    }
    Ok((file, meta))
}

/// The contents of the regular file `path`, refusing one longer than `cap` bytes (checked
/// while reading, not only by its size, which may change).
pub fn read_regular(path: &Path, cap: u64) -> std::io::Result<Vec<u8>> {
    read_regular_with(path, cap).map(|(bytes, _)| bytes)
}

/// [`read_regular`], with the file's metadata (for its mode).
pub fn read_regular_with(path: &Path, cap: u64) -> std::io::Result<(Vec<u8>, std::fs::Metadata)> {
    let (file, meta) = open_regular(path)?;
    let too_large = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("larger than the {cap} bytes accepted"),
        )
    };
    if meta.len() > cap {
        return Err(too_large());
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > cap {
        return Err(too_large());
    }
    Ok((bytes, meta))
}

/// The permission bits of `meta` that let group or others read it, if any (`0o044` …).
pub fn shared_read_bits(meta: &std::fs::Metadata) -> Option<u32> {
    let mode = meta.permissions().mode() & 0o7777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_within_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        fs_err::write(&f, b"12345").unwrap();
        assert_eq!(read_regular(&f, 5).unwrap(), b"12345");
        let e = read_regular(&f, 4).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
        let e = read_regular(Path::new("/dev/zero"), 1 << 20).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        let e = read_regular(dir.path(), 10).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        // A FIFO with no writer: refused at once instead of hanging.
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let e = read_regular(&fifo, 10).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
    }

    #[test]
    fn shared_modes_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        fs_err::write(&f, b"x").unwrap();
        fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(shared_read_bits(&f.metadata().unwrap()), None);
        fs_err::set_permissions(&f, std::fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(shared_read_bits(&f.metadata().unwrap()), Some(0o640));
    }
}

//! The uncompressed size of a layer, measured by decompressing it, with a limit.
//!
//! A layer's declared `uncompressedSize` is only as good as whoever wrote it. Measuring is
//! bounded: reading stops as soon as the stream passes `limit`, so a decompression bomb costs
//! at most `limit` bytes of work, never its own size.

use std::io::{self, BufRead, Read};
use std::time::Instant;

use crate::bundle::format::media::LayerCompression;

/// The largest zstd window a measured layer may use (32 MiB: zstd's default levels use at
/// most 8 MiB; `--long` uses 128 MiB and is refused here rather than costing that memory).
const ZSTD_WINDOW_LOG_MAX: u32 = 25;

/// What [`measure`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// The stream's uncompressed length.
    Exactly(u64),
    /// The stream yields more than the limit (reading stopped there).
    Exceeds(u64),
    /// The deadline passed, after this many bytes.
    TooSlow(u64),
}

/// Decompresses `r` as `compression` says and counts the bytes, stopping once they exceed
/// `limit` or `deadline` passes.
pub fn measure(
    r: impl BufRead,
    compression: LayerCompression,
    limit: u64,
    deadline: Option<Instant>,
) -> io::Result<Measured> {
    match compression {
        LayerCompression::Gzip => count(flate2::bufread::MultiGzDecoder::new(r), limit, deadline),
        LayerCompression::Zstd => {
            let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
            d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
            count(d, limit, deadline)
        }
        LayerCompression::None => count(r, limit, deadline),
    }
}

/// How many bytes `r` yields, up to just past `limit`, read in large pieces (a small buffer
/// costs a call into the decoder per 8 KiB).
fn count(r: impl Read, limit: u64, deadline: Option<Instant>) -> io::Result<Measured> {
    let mut r = r.take(limit.saturating_add(1));
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(Measured::Exactly(n)),
            Ok(k) => {
                n += k as u64;
                if n > limit {
                    return Ok(Measured::Exceeds(limit));
                }
                if deadline.is_some_and(|d| Instant::now() > d) {
                    return Ok(Measured::TooSlow(n));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn measures_and_stops_at_the_limit() {
        let data = vec![0u8; 3 << 20];
        let g = gz(&data);
        assert_eq!(
            measure(&g[..], LayerCompression::Gzip, 3 << 20, None).unwrap(),
            Measured::Exactly(3 << 20)
        );
        assert_eq!(
            measure(&g[..], LayerCompression::Gzip, 1 << 20, None).unwrap(),
            Measured::Exceeds(1 << 20)
        );
        let z = zstd::encode_all(&data[..], 3).unwrap();
        assert_eq!(
            measure(&z[..], LayerCompression::Zstd, u64::MAX, None).unwrap(),
            Measured::Exactly(3 << 20)
        );
        assert_eq!(
            measure(&data[..], LayerCompression::None, 10, None).unwrap(),
            Measured::Exceeds(10)
        );
        let past = Instant::now() - std::time::Duration::from_secs(1);
        assert!(matches!(
            measure(&g[..], LayerCompression::Gzip, u64::MAX, Some(past)).unwrap(),
            Measured::TooSlow(_)
        ));
        assert!(measure(&b"not gzip"[..], LayerCompression::Gzip, 100, None).is_err());
    }
}

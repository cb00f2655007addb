//! Any file: `Bundle::open` then `verify_open` must return, never panic or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinbundle::bundle::Bundle;
use pinbundle::progress::Silent;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    if let Ok(b) = Bundle::open(f.path()) {
        let _ = pinbundle::verify::verify_open(&b, 1, &Silent);
    }
});

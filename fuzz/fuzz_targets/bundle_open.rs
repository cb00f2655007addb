//! Any file: `Bundle::open`, as a whole bundle or a volume checked alone, then `verify_open`
//! must return, never panic or over-allocate.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinbundle::bundle::{Bundle, BundleSet};
use pinbundle::progress::Silent;

fuzz_target!(|data: &[u8]| {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut f, data).unwrap();
    if let Ok(b) = Bundle::open(f.path())
        && let Ok(set) = BundleSet::single(b)
    {
        let opts = pinbundle::verify::VerifyOptions {
            jobs: 1,
            trusted_keys: Vec::new(),
        };
        let _ = pinbundle::verify::verify_open(&set, &opts, &Silent);
    }
});

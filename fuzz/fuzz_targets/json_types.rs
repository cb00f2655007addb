//! The JSON a bundle carries: seek index, `pinbundle.json`, image manifests and indexes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pinbundle::bundle::format::{BundleManifest, SeekIndex, media};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<SeekIndex>(data);
    let _ = serde_json::from_slice::<BundleManifest>(data);
    for mt in [media::OCI_MANIFEST, media::OCI_INDEX, media::DOCKER_MANIFEST] {
        let _ = pinbundle::manifest::parse(data, mt, "fuzz");
    }
    let _ = pinbundle::manifest::media_type_of(data);
});

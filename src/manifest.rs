//! Reading image manifests and indexes from their raw bytes (which are never re-serialised).
//! Text from them reaches error messages only escaped and cut short.

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use crate::bundle::format::media;
use crate::reference::Digest;
use crate::text::excerpt;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(
        "{what} is a schema 1 manifest, which is deprecated and not supported; re-push the image with a current client"
    )]
    SchemaOne { what: String },
    #[error("{what} has unsupported media type \"{media_type}\"")]
    UnsupportedMediaType { what: String, media_type: String },
    #[error("{what} is not a valid {kind}: {detail}")]
    Invalid {
        what: String,
        kind: &'static str,
        detail: String,
    },
}

/// A manifest or index, parsed.
#[derive(Debug, Clone)]
pub enum Parsed {
    Index(Box<ImageIndex>),
    Image(Box<ImageManifest>),
}

/// Parses `bytes` of `media_type`; `what` names the object in errors
/// (`"manifest sha256:… of quay.io/a:v1"`).
pub fn parse(bytes: &[u8], media_type: &str, what: &str) -> Result<Parsed, Error> {
    if media_type == media::DOCKER_SCHEMA1 || media_type == media::DOCKER_SCHEMA1_SIGNED {
        return Err(Error::SchemaOne {
            what: what.to_string(),
        });
    }
    if media::is_index(media_type) {
        let index: ImageIndex = serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
            what: what.to_string(),
            kind: "image index",
            detail: excerpt(&e.to_string(), 200),
        })?;
        return Ok(Parsed::Index(Box::new(index)));
    }
    if media::is_manifest(media_type) {
        let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| Error::Invalid {
            what: what.to_string(),
            kind: "image manifest",
            detail: excerpt(&e.to_string(), 200),
        })?;
        return Ok(Parsed::Image(Box::new(m)));
    }
    Err(Error::UnsupportedMediaType {
        what: what.to_string(),
        media_type: excerpt(media_type, 100),
    })
}

/// A descriptor's digest in pinbundle's type (only sha256 is accepted).
pub fn digest_of(d: &Descriptor, what: &str) -> Result<Digest, Error> {
    d.digest()
        .to_string()
        .parse()
        .map_err(|e: crate::reference::ParseError| Error::Invalid {
            what: what.to_string(),
            kind: "descriptor",
            detail: excerpt(&e.to_string(), 200),
        })
}

/// A descriptor's media type as a string.
pub fn media_type_str(d: &Descriptor) -> String {
    d.media_type().to_string()
}

/// Checks that an image manifest's config and layers have media types pinbundle can load.
pub fn check_image_media_types(m: &ImageManifest, what: &str) -> Result<(), Error> {
    let config = media_type_str(m.config());
    if config != media::OCI_CONFIG && config != media::DOCKER_CONFIG {
        return Err(Error::UnsupportedMediaType {
            what: format!("the config of {what}"),
            media_type: excerpt(&config, 100),
        });
    }
    for l in m.layers() {
        let mt = media_type_str(l);
        if media::layer_compression(&mt).is_none() {
            return Err(Error::UnsupportedMediaType {
                what: format!("layer {} of {what}", excerpt(l.digest().as_ref(), 80)),
                media_type: excerpt(&mt, 100),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // What a registry's manifest is, by its body, is the registry client's to say
    // (`registry::client::infer_media_type`, whose tests hold the cases the second guesser
    // here had); here, only what `parse` refuses.
    #[test]
    fn schema_one_is_refused() {
        let e = parse(b"{}", media::DOCKER_SCHEMA1, "x").unwrap_err();
        assert!(e.to_string().contains("schema 1"));
    }
}

//! The references a person lists in a file: `--from-file` and `--pinned-image-set`.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{MAX_INPUT_FILE, MAX_LINE};
use crate::reference::Reference;
use crate::text::excerpt;

/// Reads references from a file: one per line, `#` starts a comment. A line longer than
/// [`MAX_LINE`] or holding a control character is refused with a short, escaped excerpt;
/// the file is read line by line, so a huge line costs no memory.
pub fn read_reference_file(path: &Path) -> Result<Vec<Reference>> {
    use std::io::BufRead as _;
    let (file, meta) = crate::input::open_regular(path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    if meta.len() > MAX_INPUT_FILE {
        bail!(
            "{} is {} bytes, more than the {MAX_INPUT_FILE} accepted for a list of references",
            path.display(),
            meta.len()
        );
    }
    let mut reader = std::io::BufReader::new(file).take(MAX_INPUT_FILE);
    let mut out = Vec::new();
    let mut buf = Vec::new();
    for n in 1.. {
        buf.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if read == 0 {
            break;
        }
        let at = || format!("{}, line {n}", path.display());
        let text = String::from_utf8_lossy(&buf);
        if buf.len() > MAX_LINE && !buf.ends_with(b"\n") {
            bail!(
                "{}: longer than {MAX_LINE} bytes: \"{}\"",
                at(),
                excerpt(&text, 60)
            );
        }
        let line = text.trim_end_matches(['\n', '\r']);
        if line.chars().any(|c| c.is_control() && c != '\t') {
            bail!(
                "{}: holds a control character: \"{}\"",
                at(),
                excerpt(line, 60)
            );
        }
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(line.parse().with_context(at)?);
    }
    Ok(out)
}

/// Reads the images of an OpenShift `PinnedImageSet` (`spec.pinnedImages[].name`).
pub fn read_pinned_image_set(path: &Path) -> Result<Vec<Reference>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Doc {
        kind: Option<String>,
        spec: Option<Spec>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Spec {
        #[serde(default)]
        pinned_images: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        name: String,
    }
    let bytes = crate::input::read_regular(path, MAX_INPUT_FILE)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{} is not UTF-8 text", path.display()))?;
    // The parser's message may quote the file: escaped and cut short.
    let doc: Doc = serde_saphyr::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a valid PinnedImageSet YAML document: {}",
            path.display(),
            excerpt(&e.to_string(), 200)
        )
    })?;
    if doc.kind.as_deref() != Some("PinnedImageSet") {
        bail!(
            "{} has kind \"{}\", expected PinnedImageSet",
            path.display(),
            excerpt(&doc.kind.unwrap_or_default(), 60)
        );
    }
    let items = doc.spec.map(|s| s.pinned_images).unwrap_or_default();
    if items.is_empty() {
        bail!("{} lists no spec.pinnedImages", path.display());
    }
    items
        .into_iter()
        .enumerate()
        .map(|(n, i)| {
            if i.name.len() > MAX_LINE || i.name.chars().any(char::is_control) {
                bail!(
                    "{}: spec.pinnedImages[{n}].name \"{}\": invalid image reference (too long, or holds a control character)",
                    path.display(),
                    excerpt(&i.name, 60)
                );
            }
            i.name
                .parse()
                .with_context(|| format!("spec.pinnedImages[{n}].name in {}", path.display()))
        })
        .collect()
}

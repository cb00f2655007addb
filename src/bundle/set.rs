//! A bundle as the commands see it: one file, or a set of volumes found from the first
//! volume, a list of files or a directory.
//!
//! Opening a set checks that every volume names the same set, that no volume is given twice,
//! that each volume carries the same `pinbundle.json` and signature, and (unless partial
//! sets are allowed) that none is missing, naming the file it expects, before any blob is
//! read. A blob cut between volumes is read, served and verified as one blob: its parts are
//! chained in order and hashed together.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::chain::{Chain, ChainHasher};
use super::format::{
    BundleManifest, MAX_DIR_FILES, MAX_MANIFEST_BLOB_LEN, MAX_SET_INDEX_LEN, MemberEntry,
    VolumeInfo,
};
use super::reader::{Bundle, MemberReader};
use super::{Error, volumes};
use crate::reference::Digest;

/// How to turn the command line's paths into a set.
#[derive(Debug, Clone, Copy, Default)]
pub struct SetOptions {
    /// Accept a set with volumes missing (`verify --partial`, `inspect`); otherwise a missing
    /// volume is an error.
    pub allow_partial: bool,
    /// When one volume file is given, also open its siblings `NAME.NNN` in the same directory.
    pub find_siblings: bool,
}

/// Where one blob lies: one member, or its parts in order.
#[derive(Debug, Clone)]
pub struct BlobLoc {
    pub digest: Digest,
    /// The blob's size (sum of its parts).
    pub size: u64,
    /// (volume position in [`BundleSet::volumes`], member index in that volume's index).
    pub parts: Vec<(usize, usize)>,
}

/// An open bundle: one file or the volumes of a set, in volume order.
#[derive(Debug)]
pub struct BundleSet {
    volumes: Vec<Arc<Bundle>>,
    info: Option<VolumeInfo>,
    missing: Vec<(u32, PathBuf)>,
    blobs: HashMap<Digest, BlobLoc>,
    /// Blobs with a part in a missing volume (partial sets only).
    incomplete: Vec<Digest>,
    /// What proved each blob hashed so far, to check its frames when read again.
    chains: Mutex<HashMap<Digest, Arc<Chain>>>,
}

impl BundleSet {
    /// Wraps one opened file (a whole bundle, or a volume checked alone).
    pub fn single(bundle: Bundle) -> Result<BundleSet, Error> {
        let missing = match &bundle.index().volume {
            Some(v) => (1..=v.count)
                .filter(|&i| i != v.index)
                .map(|i| (i, sibling_path(bundle.path(), i)))
                .collect(),
            None => Vec::new(),
        };
        let info = bundle.index().volume.clone();
        BundleSet::assemble(vec![Arc::new(bundle)], info, missing)
    }

    /// Opens what `inputs` name: a bundle file, volume files in any order, or a directory
    /// holding one set's volumes (other files there are ignored).
    ///
    /// Only seek indexes are read until the files are known to be one bundle or one set
    /// (within [`MAX_SET_INDEX_LEN`] in all); then `pinbundle.json` is read once, from the
    /// first volume.
    pub fn open(inputs: &[PathBuf], opts: SetOptions) -> Result<BundleSet, Error> {
        let files = list_inputs(inputs)?;
        let mut budget = MAX_SET_INDEX_LEN;
        let mut opened: Vec<Bundle> = Vec::new();
        for (path, explicit) in &files {
            match Bundle::open_index(path, &mut budget) {
                Ok(b) => opened.push(b),
                Err(Error::NotABundle { .. }) if !explicit => {}
                Err(e) => return Err(e),
            }
        }
        if opened.is_empty() {
            return Err(Error::NoBundleInDirectory {
                path: inputs.first().cloned().unwrap_or_default(),
            });
        }
        // One volume given alone: its siblings complete the set.
        if opts.find_siblings
            && inputs.len() == 1
            && opened.len() == 1
            && !inputs[0].is_dir()
            && let Some(v) = opened[0].index().volume.clone()
        {
            let first = opened[0].path().to_path_buf();
            for i in (1..=v.count).filter(|&i| i != v.index) {
                let p = sibling_path(&first, i);
                if p.is_file() {
                    opened.push(Bundle::open_index(&p, &mut budget)?);
                }
            }
        }
        check_one_set(&opened)?;
        let Some(info) = opened[0].index().volume.clone() else {
            let mut only = opened.remove(0);
            only.read_head()?;
            return BundleSet::assemble(vec![Arc::new(only)], None, Vec::new());
        };
        let first_path = opened[0].path().to_path_buf();
        let by_index = by_volume_index(opened, &info, &first_path)?;
        let missing: Vec<(u32, PathBuf)> = (1..=info.count)
            .filter(|i| !by_index.contains_key(i))
            .map(|i| (i, sibling_path(&first_path, i)))
            .collect();
        if !missing.is_empty() && !opts.allow_partial {
            return Err(Error::MissingVolumes {
                set: info.set,
                count: info.count,
                missing,
            });
        }
        let volumes = share_head(by_index.into_values(), &first_path)?;
        BundleSet::assemble(volumes, Some(info), missing)
    }

    fn assemble(
        volumes: Vec<Arc<Bundle>>,
        info: Option<VolumeInfo>,
        missing: Vec<(u32, PathBuf)>,
    ) -> Result<BundleSet, Error> {
        // (part index, part offset, size, volume, member) per blob.
        type Part = (u32, u64, u64, usize, usize);
        let mut parts: HashMap<Digest, Vec<Part>> = HashMap::new();
        for (vi, v) in volumes.iter().enumerate() {
            for (mi, m) in v.index().members.iter().enumerate() {
                if !m.path.starts_with("blobs/") {
                    continue;
                }
                let (index, offset) = m.part.as_ref().map_or((0, 0), |p| (p.index, p.offset));
                parts
                    .entry(m.digest.clone())
                    .or_default()
                    .push((index, offset, m.size, vi, mi));
            }
        }
        let mut blobs = HashMap::with_capacity(parts.len());
        let mut incomplete = Vec::new();
        let sizes: HashMap<&Digest, u64> = volumes[0]
            .manifest()
            .blobs
            .iter()
            .map(|b| (&b.digest, b.size))
            .collect();
        for (digest, mut list) in parts {
            list.sort();
            let path = volumes[list[0].3].path().to_path_buf();
            let bad = |detail: String| Error::BadParts {
                path: path.clone(),
                digest: digest.clone(),
                detail,
            };
            let whole = list.len() == 1 && list[0].0 == 0;
            if !whole {
                if list.iter().any(|p| p.0 == 0) {
                    return Err(bad("stored both whole and in parts".into()));
                }
                // Parts must follow each other from offset 0 without gaps or overlap.
                let mut expect = (1u32, 0u64);
                let mut gap = false;
                for &(index, offset, size, ..) in &list {
                    if index < expect.0 || (index == expect.0 && offset != expect.1) {
                        return Err(bad(format!("part {index} at offset {offset} overlaps")));
                    }
                    if index > expect.0 || offset != expect.1 {
                        gap = true;
                    }
                    expect = (index + 1, offset + size);
                }
                let complete = !gap && sizes.get(&digest) == Some(&expect.1);
                if !complete {
                    if missing.is_empty() {
                        return Err(bad(format!(
                            "parts cover {} bytes with gaps, or not the listed size",
                            expect.1
                        )));
                    }
                    incomplete.push(digest);
                    continue;
                }
            }
            let size = list.iter().map(|p| p.2).sum();
            blobs.insert(
                digest.clone(),
                BlobLoc {
                    digest,
                    size,
                    parts: list.iter().map(|p| (p.3, p.4)).collect(),
                },
            );
        }
        incomplete.sort();
        Ok(BundleSet {
            volumes,
            info,
            missing,
            blobs,
            incomplete,
            chains: Mutex::default(),
        })
    }

    /// The volumes present, in volume order (one for a whole bundle).
    pub fn volumes(&self) -> &[Arc<Bundle>] {
        &self.volumes
    }

    /// The set's identity and count; `None` for a whole bundle.
    pub fn volume_info(&self) -> Option<&VolumeInfo> {
        self.info.as_ref()
    }

    /// Volumes of the set that were not found (partial sets only).
    pub fn missing(&self) -> &[(u32, PathBuf)] {
        &self.missing
    }

    /// Blobs with a part in a missing volume (partial sets only).
    pub fn incomplete(&self) -> &[Digest] {
        &self.incomplete
    }

    /// The first file: what messages name for the bundle as a whole.
    pub fn path(&self) -> &Path {
        self.volumes[0].path()
    }

    /// The sum of the volumes' sizes.
    pub fn file_len(&self) -> u64 {
        self.volumes.iter().map(|v| v.file_len()).sum()
    }

    pub fn manifest(&self) -> &BundleManifest {
        self.volumes[0].manifest()
    }

    pub fn manifest_bytes(&self) -> &[u8] {
        self.volumes[0].manifest_bytes()
    }

    pub fn signature_bytes(&self) -> Result<Option<Vec<u8>>, Error> {
        self.volumes[0].signature_bytes()
    }

    /// Where blob `digest` lies, if the set holds all of it.
    pub fn blob(&self, digest: &Digest) -> Option<&BlobLoc> {
        self.blobs.get(digest)
    }

    /// Every blob the set holds completely.
    pub fn blobs(&self) -> impl Iterator<Item = &BlobLoc> {
        self.blobs.values()
    }

    /// The member entry of part `i` of `loc`, and its volume.
    pub fn part(&self, loc: &BlobLoc, i: usize) -> (&Bundle, &MemberEntry) {
        let (v, m) = loc.parts[i];
        let b = &self.volumes[v];
        (b, &b.index().members[m])
    }

    /// Reads `loc` from byte `offset` on, across its parts. Frames are checked as they are
    /// read; the digest is not (see [`BundleSet::read_blob`]).
    pub fn open_blob(&self, loc: &BlobLoc, offset: u64) -> BlobReader<'_> {
        let mut skip = offset;
        let mut first = 0;
        while first < loc.parts.len() {
            let size = self.part(loc, first).1.size;
            if skip < size || first + 1 == loc.parts.len() {
                break;
            }
            skip -= size;
            first += 1;
        }
        BlobReader {
            set: self,
            loc: loc.clone(),
            next: first + 1,
            current: (first < loc.parts.len()).then(|| {
                let (b, m) = self.part(loc, first);
                b.open_member(m, skip)
            }),
        }
    }

    /// The whole content of `loc`, checked against its digest: for manifests and indexes,
    /// so at most [`MAX_MANIFEST_BLOB_LEN`] bytes (a larger blob is refused unread).
    pub fn read_blob(&self, loc: &BlobLoc) -> Result<Vec<u8>, Error> {
        if loc.size > MAX_MANIFEST_BLOB_LEN {
            return Err(Error::TooLarge {
                what: format!("manifest {}", loc.digest),
                size: loc.size,
                max: MAX_MANIFEST_BLOB_LEN,
            });
        }
        let mut out = Vec::with_capacity(loc.size as usize);
        self.open_blob(loc, 0)
            .read_to_end(&mut out)
            .map_err(|e| unwrap_io(self.path(), e))?;
        let found = Digest::of(&out);
        if found != loc.digest || out.len() as u64 != loc.size {
            let (b, m) = self.part(loc, 0);
            return Err(Error::DigestMismatch {
                path: b.path().to_path_buf(),
                member: m.path.clone(),
                expected: loc.digest.clone(),
                found,
            });
        }
        Ok(out)
    }

    /// Checks every frame, tar header and padding of `loc`'s parts, and the digest of their
    /// joined content (also when there is one part: a part's own check stops at its frames).
    pub fn verify_blob(&self, loc: &BlobLoc, mut progress: impl FnMut(u64)) -> Result<(), Error> {
        let mut hasher = ChainHasher::default();
        for i in 0..loc.parts.len() {
            let (b, m) = self.part(loc, i);
            b.check_member(m, &mut hasher, &mut progress)?;
        }
        match hasher.finish(self.frames_of(loc), &loc.digest) {
            Ok(chain) => {
                self.keep_chain(&loc.digest, chain);
                Ok(())
            }
            Err(found) => {
                let (b, m) = self.part(loc, loc.parts.len() - 1);
                Err(Error::DigestMismatch {
                    path: b.path().to_path_buf(),
                    member: m.path.clone(),
                    expected: loc.digest.clone(),
                    found,
                })
            }
        }
    }

    /// The frames of `loc`'s parts, together: the length of its [`Chain`].
    pub fn frames_of(&self, loc: &BlobLoc) -> usize {
        (0..loc.parts.len())
            .map(|i| self.part(loc, i).1.frames)
            .sum()
    }

    /// What proved the blob `digest`, once [`BundleSet::verify_blob`] (or a server's whole
    /// transfer) hashed it to its digest.
    pub fn chain(&self, digest: &Digest) -> Option<Arc<Chain>> {
        lock(&self.chains).get(digest).cloned()
    }

    /// Keeps what proved the blob `digest`.
    pub fn keep_chain(&self, digest: &Digest, chain: Chain) {
        lock(&self.chains).insert(digest.clone(), Arc::new(chain));
    }
}

/// Turns an I/O error from a [`BlobReader`] back into the bundle error it carries.
pub fn unwrap_io(path: &Path, e: io::Error) -> Error {
    match e.downcast::<Error>() {
        Ok(inner) => inner,
        Err(e) => Error::Io {
            path: path.to_path_buf(),
            source: e,
        },
    }
}

/// Streams a blob across its parts.
pub struct BlobReader<'a> {
    set: &'a BundleSet,
    loc: BlobLoc,
    next: usize,
    current: Option<MemberReader<'a>>,
}

impl Read for BlobReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(r) = self.current.as_mut() else {
                return Ok(0);
            };
            let n = r.read(out)?;
            if n > 0 || out.is_empty() {
                return Ok(n);
            }
            self.current = (self.next < self.loc.parts.len()).then(|| {
                let (b, m) = self.set.part(&self.loc, self.next);
                b.open_member(m, 0)
            });
            self.next += 1;
        }
    }
}

fn hidden(p: &Path) -> bool {
    p.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// The files `inputs` name, each with whether it was named explicitly (not found in a
/// directory): directories are listed, hidden files and non-files skipped, in name order.
fn list_inputs(inputs: &[PathBuf]) -> Result<Vec<(PathBuf, bool)>, Error> {
    let mut files: Vec<(PathBuf, bool)> = Vec::new();
    for input in inputs {
        if !input.is_dir() {
            files.push((input.clone(), true));
            continue;
        }
        let read_err = |source: io::Error| Error::Io {
            path: input.clone(),
            source: crate::atomic::os_error(source),
        };
        let mut found: Vec<PathBuf> = Vec::new();
        for e in fs_err::read_dir(input).map_err(read_err)? {
            let p = e.map_err(read_err)?.path();
            if hidden(&p) || !p.is_file() {
                continue;
            }
            if found.len() == MAX_DIR_FILES {
                return Err(Error::TooManyFiles {
                    path: input.clone(),
                    max: MAX_DIR_FILES,
                });
            }
            found.push(p);
        }
        found.sort();
        files.extend(found.into_iter().map(|p| (p, false)));
    }
    if files.len() > MAX_DIR_FILES {
        return Err(Error::TooManyFiles {
            path: inputs.first().cloned().unwrap_or_default(),
            max: MAX_DIR_FILES,
        });
    }
    Ok(files)
}

/// Everything opened must be one whole bundle, or volumes of one set.
fn check_one_set(opened: &[Bundle]) -> Result<(), Error> {
    let first_path = opened[0].path();
    let first_set = opened[0].index().volume.as_ref().map(|v| &v.set);
    let set_name = |v: Option<&VolumeInfo>| match v {
        Some(v) => format!("set {}", v.set),
        None => "a whole bundle, not a volume".to_string(),
    };
    for b in &opened[1..] {
        let v = b.index().volume.as_ref();
        if first_set.is_none() || v.map(|v| &v.set) != first_set {
            return Err(Error::ForeignVolume {
                path: b.path().to_path_buf(),
                found: set_name(v),
                first: first_path.to_path_buf(),
                expected: set_name(opened[0].index().volume.as_ref()),
            });
        }
    }
    Ok(())
}

/// The volumes of one set (see [`check_one_set`]) by their number, each once, all agreeing
/// with `info` (the first's) on the count.
fn by_volume_index(
    opened: Vec<Bundle>,
    info: &VolumeInfo,
    first_path: &Path,
) -> Result<BTreeMap<u32, Bundle>, Error> {
    let mut by_index: BTreeMap<u32, Bundle> = BTreeMap::new();
    for b in opened {
        let Some(v) = b.index().volume.clone() else {
            continue; // not reached: checked by check_one_set
        };
        if v.count != info.count {
            return Err(Error::BadIndex {
                path: b.path().to_path_buf(),
                detail: format!(
                    "volume {} says the set has {} volumes, {} says {}",
                    v.index,
                    v.count,
                    first_path.display(),
                    info.count
                ),
            });
        }
        if let Some(other) = by_index.get(&v.index) {
            return Err(Error::DuplicateVolume {
                set: v.set,
                index: v.index,
                a: other.path().to_path_buf(),
                b: b.path().to_path_buf(),
            });
        }
        by_index.insert(v.index, b);
    }
    Ok(by_index)
}

/// Reads `pinbundle.json` once, from the first of `ordered`, and shares it with the others;
/// their signatures must agree too.
fn share_head(
    ordered: impl IntoIterator<Item = Bundle>,
    first_path: &Path,
) -> Result<Vec<Arc<Bundle>>, Error> {
    let mut ordered = ordered.into_iter();
    let Some(mut first) = ordered.next() else {
        return Err(Error::NoBundleInDirectory {
            path: first_path.to_path_buf(),
        });
    };
    first.read_head()?;
    let mut volumes = vec![Arc::new(first)];
    for mut v in ordered {
        v.share_head(&volumes[0])?;
        volumes.push(Arc::new(v));
    }
    // The same pinbundle.json by construction (set = its digest); the signature must agree
    // too, or one volume could carry a signature the others do not.
    let sig0 = volumes[0].signature_bytes()?;
    for v in &volumes[1..] {
        if v.signature_bytes()? != sig0 {
            return Err(Error::BadMember {
                path: v.path().to_path_buf(),
                member: super::format::SIGNATURE_PATH.into(),
                detail: format!(
                    "differs from the signature in {}",
                    volumes[0].path().display()
                ),
            });
        }
    }
    Ok(volumes)
}

/// Where volume `index` of the set that `path` belongs to is expected: `path` with its
/// `.NNN` suffix replaced (or appended).
fn sibling_path(path: &Path, index: u32) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let base = match name.as_deref().and_then(|n| n.rsplit_once('.')) {
        Some((stem, digits)) if digits.len() == 3 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            path.with_file_name(stem)
        }
        _ => path.to_path_buf(),
    };
    volumes::volume_path(&base, index)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

//! What hashing a blob to its digest proved, kept to check its frames each time they are read.
//!
//! A blob is proved once: its content hashes to its digest (in `verify`, or in the first whole
//! transfer of a server that was not given a verified set). The SHA-256 state after each of its
//! frames is kept, about a hundred bytes a frame. A frame read again later (evicted from the
//! frame cache and decoded anew, or asked for by a range) is then proved alone: hashed on from
//! the state before it, it must end in the state after it. Equal states from an equal start mean
//! equal bytes, by SHA-256's collision resistance. So every byte sent is the byte that was
//! proved, even when the file changed after it was opened: a stick that answers a second read
//! differently, or someone who rewrites a frame and fixes its XXH3 (64 bits, not made to resist
//! that). The cost is one hash per decoded frame, shared by every transfer that sends it, in
//! place of one hash per transfer.

use sha2::{Digest as _, Sha256};

use crate::reference::Digest;

/// The SHA-256 state after each frame of a blob: of its one member, or of its parts in order,
/// counting every frame, also those that hold no content.
#[derive(Clone)]
pub struct Chain {
    after: Vec<Sha256>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("frames", &self.after.len())
            .finish()
    }
}

impl Chain {
    /// Whether `content` is exactly the content of the blob's frame `n` (its position counted
    /// over all parts).
    pub fn proves(&self, n: usize, content: &[u8]) -> bool {
        self.proves_pieces(n, |add| add(content))
    }

    /// [`Chain::proves`] of content given in pieces: `pieces` calls `add` on each, in order.
    pub fn proves_pieces(&self, n: usize, pieces: impl FnOnce(&mut dyn FnMut(&[u8]))) -> bool {
        let Some(after) = self.after.get(n) else {
            return false;
        };
        let mut h = match n {
            0 => Sha256::new(),
            _ => self.after[n - 1].clone(),
        };
        pieces(&mut |p| h.update(p));
        h.finalize() == after.clone().finalize()
    }

    pub fn frames(&self) -> usize {
        self.after.len()
    }
}

/// Hashes a blob's content frame by frame and keeps the states a [`Chain`] is made of.
#[derive(Default)]
pub struct ChainHasher {
    hasher: Sha256,
    after: Vec<Sha256>,
    hashed: u64,
}

impl ChainHasher {
    /// Adds a piece of the current frame's content.
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.hashed += bytes.len() as u64;
    }

    /// Starts frame `n`: the frames skipped since the last one held no content.
    pub fn start_frame(&mut self, n: usize) {
        while self.after.len() < n {
            self.after.push(self.hasher.clone());
        }
    }

    /// Ends the current frame.
    pub fn end_frame(&mut self) {
        self.after.push(self.hasher.clone());
    }

    /// Bytes hashed so far.
    pub fn hashed(&self) -> u64 {
        self.hashed
    }

    /// The chain of a blob of `frames` frames, when what was added hashes to `digest`; else
    /// the digest it does hash to.
    pub fn finish(mut self, frames: usize, digest: &Digest) -> Result<Chain, Digest> {
        self.start_frame(frames);
        let found = Digest::from_hash(self.hasher.finalize().into());
        if &found != digest {
            return Err(found);
        }
        Ok(Chain { after: self.after })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(frames: &[&[u8]]) -> Chain {
        let all: Vec<u8> = frames.concat();
        let mut h = ChainHasher::default();
        for f in frames {
            h.update(f);
            h.end_frame();
        }
        h.finish(frames.len(), &Digest::of(&all)).unwrap()
    }

    #[test]
    fn a_frame_is_proved_only_by_its_own_bytes_at_its_own_place() {
        let a = vec![1u8; 1000];
        let b = vec![2u8; 777];
        let c = vec![3u8; 64];
        let ch = chain(&[&a, &b, &[], &c]);
        assert_eq!(ch.frames(), 4);
        assert!(ch.proves(0, &a));
        assert!(ch.proves(1, &b));
        assert!(ch.proves(2, &[]));
        assert!(ch.proves(3, &c));
        let mut d = b.clone();
        d[776] ^= 1;
        assert!(!ch.proves(1, &d));
        assert!(!ch.proves(1, &b[..776]));
        assert!(!ch.proves(0, &b), "a frame at another's place");
        assert!(!ch.proves(3, &a));
        assert!(!ch.proves(4, &[]), "beyond the last frame");
    }

    #[test]
    fn frames_without_content_may_be_skipped_and_a_wrong_digest_gives_no_chain() {
        let a = vec![7u8; 100];
        let mut h = ChainHasher::default();
        h.start_frame(1);
        h.update(&a);
        h.end_frame();
        let ch = h.finish(3, &Digest::of(&a)).unwrap();
        assert_eq!(ch.frames(), 3);
        assert!(ch.proves(0, &[]) && ch.proves(1, &a) && ch.proves(2, &[]));
        let mut h = ChainHasher::default();
        h.update(&a);
        assert_eq!(h.hashed(), 100);
        assert_eq!(
            h.finish(1, &Digest::of(b"other")).err(),
            Some(Digest::of(&a))
        );
    }
}

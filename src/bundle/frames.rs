//! A shared, bounded cache of checked frames, for the registry server.
//!
//! Without it every transfer decompressed its own copy of each frame (up to 16 MiB, plus the
//! compressed bytes): memory grew with the number of clients, and sixteen nodes pulling one
//! layer decompressed it sixteen times. Here clients pulling the same blob share one copy of
//! each frame, decoded once (the first asker decodes, the others wait for it), and the bytes of
//! live frames (cached, being decoded, or still held by a transfer after their eviction) and of
//! the buffers kept for reuse stay within a budget: a frame that does not fit waits for one to
//! be released, at most [`MAX_WAIT`], so a client that stops reading cannot stall the others
//! for long. A frame of Raw blocks (a stored gzip or zstd layer, most of a bundle) is kept as
//! it was read, its content sent from between the block headers: decoding it would only copy.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use super::Error;
use super::reader::{Bundle, FrameBuf, Kept};

/// How long a frame waits for room in the budget before it is decoded beyond it.
pub const MAX_WAIT: Duration = Duration::from_secs(5);

/// How often a waiter looks again: a release is signalled, but a signal may come between a
/// waiter's look and its wait.
const POLL: Duration = Duration::from_millis(20);

/// The cache; clone the `Arc` to share it.
pub struct FrameCache {
    shared: Arc<Shared>,
    /// Buffers for compressed bytes: one per decode running at once, at most one per core.
    bufs: Mutex<Vec<FrameBuf>>,
    bufs_made: AtomicU64,
    bufs_free: Condvar,
    max_bufs: u64,
}

struct Shared {
    budget: u64,
    state: Mutex<State>,
    changed: Condvar,
    /// Bytes of live frames, of decodes under way and of `pool`.
    used: AtomicU64,
    /// The buffers of released frames, for the next decodes: freeing and allocating 16 MiB
    /// buffers by the thousand leaves glibc's arenas holding far more than is live (measured:
    /// peak RSS 508 MiB for a 256 MiB budget, 313 MiB with a fixed mmap threshold).
    pool: Mutex<Vec<Vec<u8>>>,
    stats: Counters,
}

#[derive(Default)]
struct State {
    entries: HashMap<(u64, usize), Slot>,
    tick: u64,
}

enum Slot {
    /// Someone is decoding it; wait for them.
    Loading,
    Ready {
        frame: Arc<Frame>,
        last_use: u64,
    },
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    decoded: AtomicU64,
    over_budget: AtomicU64,
}

/// What the cache did, for tests and the access log's summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameCacheStats {
    /// Frames served from the cache (or from another transfer's decode).
    pub hits: u64,
    /// Frames read from the file and decompressed.
    pub decoded: u64,
    /// Decodes that waited [`MAX_WAIT`] for room and went beyond the budget.
    pub over_budget: u64,
    /// Bytes of frames now live, being decoded, or pooled for reuse.
    pub used: u64,
}

/// One checked frame's content: decompressed, or (a frame of Raw blocks, how stored layers
/// are written) the frame as read, with where its content lies between the block headers.
/// Dropping the last handle gives its buffer back to the pool.
pub struct Frame {
    data: Vec<u8>,
    /// Where the content lies in `data` (Raw blocks); `None`: all of `data`.
    pieces: Option<Vec<Range<usize>>>,
    /// What [`Frame::proved`] found, once asked.
    proof: OnceLock<bool>,
    shared: Arc<Shared>,
}

impl Frame {
    /// Whether `check` accepts this frame ([`super::chain::Chain`]). Asked once per decode:
    /// the first caller checks, callers at the same time wait for its answer, later ones get
    /// it. A frame belongs to one blob, so the answer holds for every transfer of it.
    pub fn proved(&self, check: impl FnOnce(&Frame) -> bool) -> bool {
        *self.proof.get_or_init(|| check(self))
    }

    /// The content's length.
    pub fn len(&self) -> usize {
        match &self.pieces {
            None => self.data.len(),
            Some(p) => p.iter().map(|r| r.len()).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where content bytes `from..to` lie in the buffer ([`AsRef`]), piece by piece, in order.
    pub fn ranges(&self, from: usize, to: usize, mut f: impl FnMut(Range<usize>)) {
        let Some(pieces) = &self.pieces else {
            if from < to {
                f(from..to);
            }
            return;
        };
        let mut pos = 0;
        for r in pieces {
            let (a, b) = (pos.max(from), (pos + r.len()).min(to));
            if a < b {
                f(r.start + a - pos..r.start + b - pos);
            }
            pos += r.len();
            if pos >= to {
                break;
            }
        }
    }

    /// Content bytes `from..to`, piece by piece.
    pub fn pieces(&self, from: usize, to: usize, mut f: impl FnMut(&[u8])) {
        self.ranges(from, to, |r| f(&self.data[r]));
    }

    /// The content, copied.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        self.pieces(0, self.len(), |p| out.extend_from_slice(p));
        out
    }
}

/// The buffer the content lies in (see [`Frame::ranges`]).
impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        // Its bytes stay counted in `used`, as the pool's.
        lock(&self.shared.pool).push(std::mem::take(&mut self.data));
        self.shared.changed.notify_all();
    }
}

impl std::fmt::Debug for FrameCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameCache")
            .field("budget", &self.shared.budget)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FrameCache {
    /// A cache whose live frames hold at most `budget` bytes (one frame always fits).
    pub fn new(budget: u64) -> FrameCache {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        FrameCache {
            shared: Arc::new(Shared {
                budget,
                state: Mutex::new(State::default()),
                changed: Condvar::new(),
                used: AtomicU64::new(0),
                pool: Mutex::new(Vec::new()),
                stats: Counters::default(),
            }),
            bufs: Mutex::new(Vec::new()),
            bufs_made: AtomicU64::new(0),
            bufs_free: Condvar::new(),
            max_bufs: cores as u64,
        }
    }

    pub fn stats(&self) -> FrameCacheStats {
        let s = &self.shared.stats;
        FrameCacheStats {
            hits: s.hits.load(Ordering::Relaxed),
            decoded: s.decoded.load(Ordering::Relaxed),
            over_budget: s.over_budget.load(Ordering::Relaxed),
            used: self.shared.used.load(Ordering::SeqCst),
        }
    }

    /// Frame `i` of `bundle`, checked (shape, size and, with `checksums`, XXH3 and the zstd
    /// content checksum): from the cache, from another caller's decode of it, or read now.
    ///
    /// A caller that proves every frame's content before using it ([`Frame::proved`]) may
    /// skip the checksums ([`Bundle::read_frame_keep`]). Whoever decodes a frame decides for
    /// all its users, so callers of one frame must agree: the server asks with `checksums`
    /// exactly while the frame's blob has no chain, and a blob never loses its chain.
    pub fn get(&self, bundle: &Bundle, i: usize, checksums: bool) -> Result<Arc<Frame>, Error> {
        let key = (bundle.id(), i);
        // Room for the frame as read (Raw blocks are kept so) or decompressed.
        let f = &bundle.index().frames[i];
        let need = f.size.max(f.length);
        let shared = &self.shared;
        let deadline = Instant::now() + MAX_WAIT;
        let mut state = lock(&shared.state);
        let buf = loop {
            let tick = state.tick + 1;
            match state.entries.get_mut(&key) {
                Some(Slot::Ready { frame, last_use }) => {
                    *last_use = tick;
                    let frame = Arc::clone(frame);
                    state.tick = tick;
                    shared.stats.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(frame);
                }
                Some(Slot::Loading) => {
                    state = wait(&shared.changed, state);
                    continue;
                }
                None => {}
            }
            let late = Instant::now() >= deadline;
            // Room: in the budget as it is, else after evicting idle frames, oldest first.
            let mut room = shared.room(need, false);
            while room.is_none() && state.evict_oldest_idle() {
                room = shared.room(need, false);
            }
            let forced = room.is_none() && late;
            if forced {
                room = shared.room(need, true);
            }
            if let Some(buf) = room {
                if forced {
                    shared.stats.over_budget.fetch_add(1, Ordering::Relaxed);
                }
                state.entries.insert(key, Slot::Loading);
                break buf;
            }
            state = wait(&shared.changed, state);
        };
        drop(state);

        let (decoded, data) = self.decode(bundle, i, buf, checksums);
        let mut state = lock(&shared.state);
        let result = match decoded {
            Ok(pieces) => {
                shared.stats.decoded.fetch_add(1, Ordering::Relaxed);
                let frame = Arc::new(Frame {
                    data,
                    pieces,
                    proof: OnceLock::new(),
                    shared: Arc::clone(shared),
                });
                state.tick += 1;
                let last_use = state.tick;
                state.entries.insert(
                    key,
                    Slot::Ready {
                        frame: Arc::clone(&frame),
                        last_use,
                    },
                );
                Ok(frame)
            }
            Err(e) => {
                // The next asker tries again, and fails the same way if the file is bad.
                state.entries.remove(&key);
                lock(&shared.pool).push(data);
                Err(e)
            }
        };
        drop(state);
        shared.changed.notify_all();
        result
    }

    /// Reads frame `i` with a read buffer (waiting for one when every core's is in use) into
    /// `keep` ([`Bundle::read_frame_keep`]). Returns the buffer holding the frame whatever
    /// happened, counted in the budget at its size.
    fn decode(&self, bundle: &Bundle, i: usize, keep: Vec<u8>, checksums: bool) -> Kept {
        let mut buf = {
            let mut bufs = lock(&self.bufs);
            loop {
                if let Some(b) = bufs.pop() {
                    break b;
                }
                if self.bufs_made.load(Ordering::SeqCst) < self.max_bufs {
                    self.bufs_made.fetch_add(1, Ordering::SeqCst);
                    break FrameBuf::default();
                }
                bufs = self.bufs_free.wait(bufs).unwrap_or_else(|p| p.into_inner());
            }
        };
        let counted = keep.capacity() as u64;
        let (result, kept) = bundle.read_frame_keep(i, &mut buf, keep, checksums);
        lock(&self.bufs).push(buf);
        self.bufs_free.notify_one();
        // The buffer kept may be another size than the one counted (it grew, or it is the
        // read buffer it traded places with).
        let size = kept.capacity() as u64;
        if size > counted {
            self.shared.used.fetch_add(size - counted, Ordering::SeqCst);
        } else {
            self.shared.used.fetch_sub(counted - size, Ordering::SeqCst);
        }
        (result, kept)
    }
}

impl Shared {
    /// A buffer for a frame of `need` bytes, within the budget: a pooled one that fits (not
    /// four times too big), else a new one, after freeing pooled buffers too small to use;
    /// `None` when neither fits. `late`: a new one even beyond the budget.
    fn room(&self, need: u64, late: bool) -> Option<Vec<u8>> {
        let mut pool = lock(&self.pool);
        let fitting = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() as u64 >= need)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(k, b)| (k, b.capacity() as u64));
        if let Some((k, cap)) = fitting {
            if cap <= need.saturating_mul(4).max(1 << 20) {
                return Some(pool.swap_remove(k));
            }
        }
        // Give back what the pool holds that this frame cannot use, until a new one fits.
        let fits = |used: u64| used == 0 || used.saturating_add(need) <= self.budget;
        while !fits(self.used.load(Ordering::SeqCst)) {
            let Some(k) = (0..pool.len()).min_by_key(|&k| pool[k].capacity()) else {
                break;
            };
            let b = pool.swap_remove(k);
            self.used.fetch_sub(b.capacity() as u64, Ordering::SeqCst);
        }
        if fits(self.used.load(Ordering::SeqCst)) || late {
            self.used.fetch_add(need, Ordering::SeqCst);
            return Some(Vec::with_capacity(need as usize));
        }
        // Too big for this frame, but room all the same once nothing else is.
        fitting.map(|(k, _)| pool.swap_remove(k))
    }
}

impl State {
    /// Drops the least recently used cached frame no transfer holds (its buffer goes to the
    /// pool); `false` when there is none.
    fn evict_oldest_idle(&mut self) -> bool {
        let oldest = self
            .entries
            .iter()
            .filter_map(|(k, s)| match s {
                // Only the cache holds it, and only the cache (under the lock) hands it out.
                Slot::Ready { frame, last_use } if Arc::strong_count(frame) == 1 => {
                    Some((*k, *last_use))
                }
                _ => None,
            })
            .min_by_key(|&(_, t)| t);
        oldest.is_some_and(|(k, _)| self.entries.remove(&k).is_some())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn wait<'a>(c: &Condvar, g: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
    c.wait_timeout(g, POLL)
        .map(|(g, _)| g)
        .unwrap_or_else(|p| p.into_inner().0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::writer::{BundleWriter, Compression, WriterOptions};
    use std::sync::mpsc;

    const FRAME: usize = 4096;

    /// A bundle of one blob of distinct bytes cut in 4 KiB frames.
    fn bundle(dir: &std::path::Path) -> Bundle {
        bundle_of(dir, Compression::Zstd)
    }

    fn bundle_of(dir: &std::path::Path, compression: Compression) -> Bundle {
        let data: Vec<u8> = (0..10 * FRAME as u32)
            .flat_map(|i| i.to_le_bytes())
            .collect();
        let opts = WriterOptions {
            frame_size: FRAME,
            ..WriterOptions::default()
        };
        let mut w = BundleWriter::new(Vec::new(), opts);
        let manifest = crate::bundle::format::BundleManifest {
            format: crate::bundle::format::FORMAT_NAME.into(),
            format_version: crate::bundle::format::FORMAT_VERSION,
            ..crate::bundle::format::BundleManifest::empty()
        };
        let manifest = serde_json::to_vec(&manifest).unwrap();
        w.add_bytes("pinbundle.json", &manifest, Compression::Zstd)
            .unwrap();
        let path = crate::reference::Digest::of(&data).layout_path();
        w.add_bytes(&path, &data, compression).unwrap();
        let path = dir.join("b.pinbundle");
        fs_err::write(&path, w.finish().unwrap().0).unwrap();
        Bundle::open(&path).unwrap()
    }

    #[test]
    fn a_frame_is_decoded_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path());
        let cache = FrameCache::new(1 << 30);
        let frames = b.index().frames.len();
        assert!(frames > 8, "{frames} frames");
        for i in 0..frames {
            assert_eq!(
                cache.get(&b, i, true).unwrap().to_vec(),
                b.read_frame(i).unwrap()
            );
        }
        // Eight threads at once on one frame: one decode, one copy.
        let cache = FrameCache::new(1 << 30);
        let got: Vec<Arc<Frame>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| cache.get(&b, 3, true).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.iter().all(|f| Arc::ptr_eq(f, &got[0])));
        let st = cache.stats();
        assert_eq!((st.decoded, st.hits), (1, 7));
        assert_eq!(st.used, b.index().frames[3].size);
    }

    #[test]
    fn a_frame_of_raw_blocks_is_kept_as_read_and_its_content_found_between_the_headers() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle_of(dir.path(), Compression::Store);
        let cache = FrameCache::new(1 << 30);
        let mut raw_frames = 0;
        for i in 0..b.index().frames.len() {
            let f = cache.get(&b, i, true).unwrap();
            let want = b.read_frame(i).unwrap();
            assert_eq!(f.to_vec(), want, "frame {i}");
            assert_eq!(f.len(), want.len());
            // Any range of it, piece by piece.
            let (from, to) = (want.len() / 3, want.len() - 5);
            let mut got = Vec::new();
            f.pieces(from, to, |p| got.extend_from_slice(p));
            assert_eq!(got, want[from..to]);
            // Kept as read: the buffer holds the block headers and checksum too.
            let e = &b.index().frames[i];
            let held: &[u8] = (*f).as_ref();
            if held.len() >= e.length as usize && e.length > e.size {
                raw_frames += 1;
            }
        }
        assert!(raw_frames > 8, "{raw_frames} frames kept as read");
        let used = cache.stats().used;
        let need: u64 = b.index().frames.iter().map(|f| f.size.max(f.length)).sum();
        assert!(used >= need, "{used} < {need}");
    }

    #[test]
    fn live_frames_stay_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path());
        let size = |i: usize| b.index().frames[i].size;
        // Room for frames 1 and 2 (full frames), not for a third.
        let budget = size(1) + size(2);
        let cache = FrameCache::new(budget);
        let one = cache.get(&b, 1, true).unwrap();
        let two = cache.get(&b, 2, true).unwrap();
        assert_eq!(cache.stats().used, budget);
        // Both held: frame 3 waits for room ...
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(cache.get(&b, 3, true).map(|f| f.len())).unwrap());
            assert!(
                rx.recv_timeout(Duration::from_millis(300)).is_err(),
                "a frame beyond the budget did not wait"
            );
            // ... and is decoded once one is released, in place of the released one.
            drop(one);
            let got = rx.recv_timeout(MAX_WAIT).unwrap().unwrap();
            assert_eq!(got as u64, size(3));
        });
        let st = cache.stats();
        assert_eq!(st.over_budget, 0);
        assert!(st.used <= budget, "{} > {budget}", st.used);
        // Frame 2 is still cached (held); frame 1 was evicted and is decoded again.
        drop(two);
        let before = cache.stats().decoded;
        cache.get(&b, 2, true).unwrap();
        assert_eq!(cache.stats().decoded, before);
        cache.get(&b, 1, true).unwrap();
        assert_eq!(cache.stats().decoded, before + 1);
        assert!(cache.stats().used <= budget);
    }

    #[test]
    fn a_damaged_frame_is_an_error_and_not_kept() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path());
        let f = b.index().frames[2].clone();
        let path = b.path().to_path_buf();
        drop(b);
        let mut bytes = fs_err::read(&path).unwrap();
        bytes[(f.offset + f.length / 2) as usize] ^= 1;
        fs_err::write(&path, bytes).unwrap();
        let b = Bundle::open(&path).unwrap();
        let cache = FrameCache::new(1 << 30);
        for _ in 0..2 {
            let e = cache.get(&b, 2, true).map(|_| ()).unwrap_err();
            assert!(matches!(e, Error::BadFrame { frame: 2, .. }), "{e}");
        }
        // Nothing decoded; its buffer waits in the pool for the next frame.
        let st = cache.stats();
        assert_eq!(st.decoded, 0);
        assert_eq!(st.used, f.size);
        assert!(cache.get(&b, 1, true).is_ok());
        assert_eq!(cache.stats().used, f.size);
    }
}

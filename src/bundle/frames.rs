//! A shared, bounded cache of checked, decompressed frames, for the registry server.
//!
//! Without it every transfer decompressed its own copy of each frame (up to 16 MiB, plus the
//! compressed bytes): memory grew with the number of clients, and sixteen nodes pulling one
//! layer decompressed it sixteen times. Here clients pulling the same blob share one copy of
//! each frame, decoded once (the first asker decodes, the others wait for it), and the bytes of
//! live frames (cached, being decoded, or still held by a transfer after their eviction) stay
//! within a budget: a frame that does not fit waits for one to be released, at most
//! [`MAX_WAIT`], so a client that stops reading cannot stall the others for long.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::Error;
use super::reader::{Bundle, FrameBuf};

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
    /// Bytes of live frames and of decodes under way.
    used: AtomicU64,
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
    /// Bytes of live frames now.
    pub used: u64,
}

/// One checked frame's decompressed bytes. Dropping the last handle gives its bytes back to
/// the budget.
pub struct Frame {
    data: Vec<u8>,
    reserved: u64,
    shared: Arc<Shared>,
}

impl AsRef<[u8]> for Frame {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl std::ops::Deref for Frame {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for Frame {
    fn drop(&mut self) {
        self.shared.used.fetch_sub(self.reserved, Ordering::SeqCst);
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

    /// Frame `i` of `bundle`, checked (XXH3, shape, zstd checksum, size) and decompressed:
    /// from the cache, from another caller's decode of it, or read now.
    pub fn get(&self, bundle: &Bundle, i: usize) -> Result<Arc<Frame>, Error> {
        let key = (bundle.id(), i);
        let need = bundle.index().frames[i].size;
        let shared = &self.shared;
        let deadline = Instant::now() + MAX_WAIT;
        let mut state = lock(&shared.state);
        loop {
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
            let fits = |used: u64| used == 0 || used.saturating_add(need) <= shared.budget;
            if !fits(shared.used.load(Ordering::SeqCst)) {
                state.evict_until(|| fits(shared.used.load(Ordering::SeqCst)));
            }
            let late = Instant::now() >= deadline;
            if fits(shared.used.load(Ordering::SeqCst)) || late {
                if late {
                    shared.stats.over_budget.fetch_add(1, Ordering::Relaxed);
                }
                shared.used.fetch_add(need, Ordering::SeqCst);
                state.entries.insert(key, Slot::Loading);
                break;
            }
            state = wait(&shared.changed, state);
        }
        drop(state);

        let decoded = self.decode(bundle, i);
        let mut state = lock(&shared.state);
        let result = match decoded {
            Ok(data) => {
                shared.stats.decoded.fetch_add(1, Ordering::Relaxed);
                let frame = Arc::new(Frame {
                    data,
                    reserved: need,
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
                shared.used.fetch_sub(need, Ordering::SeqCst);
                Err(e)
            }
        };
        drop(state);
        shared.changed.notify_all();
        result
    }

    /// Reads and decompresses frame `i` with a buffer of the pool (waiting for one when every
    /// core's is in use).
    fn decode(&self, bundle: &Bundle, i: usize) -> Result<Vec<u8>, Error> {
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
        let result = bundle.read_frame_into(i, &mut buf).map(|_| ());
        let data = buf.take_out();
        lock(&self.bufs).push(buf);
        self.bufs_free.notify_one();
        result.map(|()| data)
    }
}

impl State {
    /// Drops cached frames no transfer holds, least recently used first, until `enough`.
    fn evict_until(&mut self, enough: impl Fn() -> bool) {
        let mut idle: Vec<((u64, usize), u64)> = self
            .entries
            .iter()
            .filter_map(|(k, s)| match s {
                // Only the cache holds it, and only the cache (under the lock) hands it out.
                Slot::Ready { frame, last_use } if Arc::strong_count(frame) == 1 => {
                    Some((*k, *last_use))
                }
                _ => None,
            })
            .collect();
        idle.sort_unstable_by_key(|&(_, t)| t);
        for (k, _) in idle {
            if enough() {
                break;
            }
            // Dropping the frame gives its bytes back (Frame::drop).
            self.entries.remove(&k);
        }
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
        w.add_bytes(&path, &data, Compression::Zstd).unwrap();
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
                &cache.get(&b, i).unwrap()[..],
                &b.read_frame(i).unwrap()[..]
            );
        }
        // Eight threads at once on one frame: one decode, one copy.
        let cache = FrameCache::new(1 << 30);
        let got: Vec<Arc<Frame>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| cache.get(&b, 3).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(got.iter().all(|f| Arc::ptr_eq(f, &got[0])));
        let st = cache.stats();
        assert_eq!((st.decoded, st.hits), (1, 7));
        assert_eq!(st.used, b.index().frames[3].size);
    }

    #[test]
    fn live_frames_stay_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let b = bundle(dir.path());
        let size = |i: usize| b.index().frames[i].size;
        // Room for frames 1 and 2 (full frames), not for a third.
        let budget = size(1) + size(2);
        let cache = FrameCache::new(budget);
        let one = cache.get(&b, 1).unwrap();
        let two = cache.get(&b, 2).unwrap();
        assert_eq!(cache.stats().used, budget);
        // Both held: frame 3 waits for room ...
        let (tx, rx) = mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| tx.send(cache.get(&b, 3).map(|f| f.len())).unwrap());
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
        cache.get(&b, 2).unwrap();
        assert_eq!(cache.stats().decoded, before);
        cache.get(&b, 1).unwrap();
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
            let e = cache.get(&b, 2).map(|_| ()).unwrap_err();
            assert!(matches!(e, Error::BadFrame { frame: 2, .. }), "{e}");
        }
        let st = cache.stats();
        assert_eq!((st.decoded, st.used), (0, 0));
        assert!(cache.get(&b, 1).is_ok());
    }
}

//! Progress reporting. Library code reports through [`Reporter`] and never draws anything; the
//! CLI picks a renderer (bars on a terminal, nothing otherwise).

/// Receives progress events from long-running work. All methods have empty defaults so a
/// reporter implements only what it shows.
pub trait Reporter: Send + Sync {
    /// A phase with `total` units (bytes unless said otherwise) begins.
    fn start(&self, _phase: &str, _total: u64) {}
    /// `n` more units of the current phase are done.
    fn advance(&self, _n: u64) {}
    /// The current phase is over.
    fn finish(&self) {}
    /// What the current phase is working on now (e.g. the image being imported), shown next
    /// to its progress.
    fn step(&self, _what: &str) {}
    /// The current phase is over and `result` says what it did (`verified 12 blobs, 730.0
    /// MiB`); a reporter that draws progress leaves it as the phase's last line.
    fn done(&self, _result: &str) {
        self.finish()
    }
    /// A one-line message about a step (e.g. a retry).
    fn message(&self, _msg: &str) {}
    /// A message a person should see even when no progress is drawn, e.g. that `load` waits
    /// for another load. Shown like [`Reporter::message`] unless a reporter says otherwise.
    fn notice(&self, msg: &str) {
        self.message(msg)
    }
}

/// A reporter that shows nothing.
pub struct Silent;

impl Reporter for Silent {}

/// `n` and the noun, plural unless `n` is 1 (`1 blob`, `12 blobs`, `3 entries`).
pub fn count(n: usize, noun: &str) -> String {
    match (n, noun.strip_suffix('y')) {
        (1, _) => format!("1 {noun}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        _ => format!("{n} {noun}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts() {
        assert_eq!(super::count(1, "blob"), "1 blob");
        assert_eq!(super::count(0, "image"), "0 images");
        assert_eq!(super::count(3, "entry"), "3 entries");
    }
}

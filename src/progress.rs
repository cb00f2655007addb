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

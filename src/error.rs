//! Error helpers shared by the reports.

/// `error: caused by: …` flattened to one line, for reports (`--json` fields and the lines
/// that quote a failure).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #[test]
    fn chain_joins_every_source() {
        let inner = std::io::Error::other("disk on fire");
        let outer = std::io::Error::other(Wrapped(inner));
        assert_eq!(super::error_chain(&outer), "wrapped: disk on fire");
    }

    #[derive(Debug)]
    struct Wrapped(std::io::Error);
    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}

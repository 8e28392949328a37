//! An error and its sources as one line, the form every user-facing message of pug takes
//! (CLI output, event messages, `last_error`, proxy answers).
//!
//! Owns: the format (`outer: cause: root cause`, a cause whose text the line already holds
//! not repeated). Must not: decide what an error says (each error's `Display` does).

/// `e` and its sources on one line; a source already in the text is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct E(&'static str, Option<Box<E>>);
    impl std::fmt::Display for E {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for E {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    #[test]
    fn sources_follow_once() {
        let cases = [
            (E("alone", None), "alone"),
            (
                E("cannot start", Some(Box::new(E("port taken", None)))),
                "cannot start: port taken",
            ),
            // A cause the outer message already quotes is not said twice.
            (
                E(
                    "cannot start: port taken",
                    Some(Box::new(E(
                        "port taken",
                        Some(Box::new(E("EADDRINUSE", None))),
                    ))),
                ),
                "cannot start: port taken: EADDRINUSE",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(error_chain(&e), want);
        }
    }
}

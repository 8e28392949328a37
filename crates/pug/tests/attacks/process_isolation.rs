//! Attacks on process_isolation (filled in by issue 14's work).

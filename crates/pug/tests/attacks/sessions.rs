//! Attacks on sessions (filled in by issue 14's work).

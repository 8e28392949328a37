//! Attacks on login (filled in by issue 14's work).

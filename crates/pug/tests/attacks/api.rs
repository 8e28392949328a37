//! Attacks on api (filled in by issue 14's work).

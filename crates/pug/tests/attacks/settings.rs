//! Attacks on settings (filled in by issue 14's work).

//! The chat's wire protocol.
//!
//! A client sends one JSON object per text frame, `{"name": "...", "message": "..."}` (the seed's
//! `Message` interface). The server broadcasts the same two fields, re-serialized, to every client,
//! the sender included. A frame that is not such a message is answered, to its sender only, with an
//! [`ErrorFrame`] `{"error": "<reason>", "detail": "..."}`; clients tell the two apart by the
//! `error` key.

use serde::{Deserialize, Serialize};

/// Default limit on one incoming frame, in bytes of its UTF-8 text.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4096;

/// One chat message, as sent by a client and as broadcast by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it, as the client chose to call itself.
    pub name: String,
    /// What they wrote.
    pub message: String,
}

/// Why the server refused a frame; also the `reason` label of `chat_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorReason {
    /// The frame is not JSON at all (the seed's chaos sends the text `garbage`), or it is binary.
    InvalidJson,
    /// The frame is JSON but not an object with string fields `name` and `message`.
    MissingField,
    /// The frame is longer than the server's size limit.
    TooLarge,
}

impl ErrorReason {
    /// Every reason, so the metric can start each one at zero.
    pub const ALL: [ErrorReason; 3] = [
        ErrorReason::InvalidJson,
        ErrorReason::MissingField,
        ErrorReason::TooLarge,
    ];

    /// The snake_case name used on the wire and as the metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorReason::InvalidJson => "invalid_json",
            ErrorReason::MissingField => "missing_field",
            ErrorReason::TooLarge => "too_large",
        }
    }
}

impl std::fmt::Display for ErrorReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused frame: the reason (counted) and a human-readable detail (sent back to the sender).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// What kind of bad frame it was.
    pub reason: ErrorReason,
    /// What exactly was wrong, for the sender.
    pub detail: String,
}

/// The frame the server sends back to the sender of a refused frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The reason, as [`ErrorReason::as_str`] spells it.
    pub error: String,
    /// What exactly was wrong.
    pub detail: String,
}

impl From<&Rejection> for ErrorFrame {
    fn from(rejection: &Rejection) -> Self {
        ErrorFrame {
            error: rejection.reason.as_str().to_owned(),
            detail: rejection.detail.clone(),
        }
    }
}

/// Sorts one incoming text frame into a chat message or a rejection.
///
/// The size is checked first, so an oversized frame is never parsed.
pub fn parse_message(text: &str, max_bytes: usize) -> Result<ChatMessage, Rejection> {
    if text.len() > max_bytes {
        return Err(Rejection {
            reason: ErrorReason::TooLarge,
            detail: format!("message is {} bytes, the limit is {max_bytes}", text.len()),
        });
    }
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Rejection {
        reason: ErrorReason::InvalidJson,
        detail: format!("not JSON: {e}"),
    })?;
    let field = |key: &str| -> Result<String, Rejection> {
        match value.get(key) {
            Some(serde_json::Value::String(s)) => Ok(s.clone()),
            _ => Err(Rejection {
                reason: ErrorReason::MissingField,
                detail: format!("expected a JSON object with a string field `{key}`"),
            }),
        }
    };
    Ok(ChatMessage {
        name: field("name")?,
        message: field("message")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_message_parses() {
        let m = parse_message(r#"{"name":"ann","message":"hi","extra":1}"#, 100).unwrap();
        assert_eq!(
            m,
            ChatMessage {
                name: "ann".into(),
                message: "hi".into()
            }
        );
    }

    #[test]
    fn each_bad_kind_has_its_reason() {
        let reason = |text: &str| parse_message(text, 32).unwrap_err().reason;
        assert_eq!(reason("garbage"), ErrorReason::InvalidJson);
        assert_eq!(reason(r#"{"name":"ann""#), ErrorReason::InvalidJson);
        assert_eq!(reason(r#"{"name":"ann"}"#), ErrorReason::MissingField);
        assert_eq!(
            reason(r#"{"name":"ann","message":3}"#),
            ErrorReason::MissingField
        );
        assert_eq!(reason("[1,2]"), ErrorReason::MissingField);
        assert_eq!(reason(&"x".repeat(33)), ErrorReason::TooLarge);
    }

    #[test]
    fn the_limit_is_inclusive() {
        let text = r#"{"name":"a","message":"b"}"#;
        assert!(parse_message(text, text.len()).is_ok());
        assert!(parse_message(text, text.len() - 1).is_err());
    }
}

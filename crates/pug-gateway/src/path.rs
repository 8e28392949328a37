//! Request-path normalisation: the one view of a path that routing, authorisation and the
//! upstream request all share ("authorise what you forward").
//!
//! Dot segments are resolved after percent-decoding (`%2e%2e` is `..`), empty segments
//! (`//`) collapse, and anything whose meaning differs between servers is refused outright:
//! encoded `/` or `\` (`%2f`, `%5c`), raw backslashes, control characters and broken
//! percent-escapes. Everything else (`%252f`, `;`, unicode look-alike dots) stays a literal
//! segment, so it can never name another tenant.

use percent_encoding::percent_decode_str;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the request path contains {0}, which pug does not accept")]
    Forbidden(&'static str),
    #[error("the request path climbs above the root with '..'")]
    AboveRoot,
}

/// Normalises a raw (still percent-encoded) request path. The result starts with `/`, has no
/// empty, `.` or `..` segments, and keeps a trailing `/` when the input had one (or ended in a
/// dot segment).
pub fn normalize(raw: &str) -> Result<String, PathError> {
    if !raw.starts_with('/') {
        return Err(PathError::Forbidden("no leading '/'"));
    }
    if raw.contains('\\') {
        return Err(PathError::Forbidden("a backslash"));
    }
    // The common case: nothing to decode, collapse or resolve.
    if !raw.contains('%')
        && !raw.contains("//")
        && !raw.split('/').any(|s| s == "." || s == "..")
        && raw.bytes().all(|b| b >= 0x20 && b != 0x7f)
    {
        return Ok(raw.to_owned());
    }
    let mut out: Vec<&str> = Vec::new();
    let mut last_was_dot = false;
    for segment in raw.split('/') {
        if segment.is_empty() {
            continue;
        }
        let decoded = decode(segment)?;
        last_was_dot = true;
        match decoded.as_slice() {
            b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
            }
            _ => {
                out.push(segment);
                last_was_dot = false;
            }
        }
    }
    let trailing_slash = raw.ends_with('/') || last_was_dot;
    let mut path = String::with_capacity(raw.len());
    for s in &out {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(path)
}

/// Percent-decodes one segment, refusing what must not be in one.
fn decode(segment: &str) -> Result<Vec<u8>, PathError> {
    let bytes = segment.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .ok_or(PathError::Forbidden("a broken percent-escape"))?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return Err(PathError::Forbidden("a broken percent-escape"));
            }
        }
        if *b < 0x20 || *b == 0x7f {
            return Err(PathError::Forbidden("a control character"));
        }
    }
    let decoded: Vec<u8> = percent_decode_str(segment).collect();
    for b in &decoded {
        match b {
            b'/' => return Err(PathError::Forbidden("an encoded '/' (%2F)")),
            b'\\' => return Err(PathError::Forbidden("an encoded backslash (%5C)")),
            0..=0x1f | 0x7f => return Err(PathError::Forbidden("an encoded control character")),
            _ => {}
        }
    }
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_are_kept() {
        assert_eq!(normalize("/").unwrap(), "/");
        assert_eq!(normalize("/t/acme/").unwrap(), "/t/acme/");
        assert_eq!(normalize("/t/acme").unwrap(), "/t/acme");
        assert_eq!(normalize("/t/acme/api/user").unwrap(), "/t/acme/api/user");
        assert_eq!(normalize("/t/acme/d/x%20y").unwrap(), "/t/acme/d/x%20y");
    }

    #[test]
    fn dot_segments_resolve() {
        assert_eq!(normalize("/t/acme/../bob/").unwrap(), "/t/bob/");
        assert_eq!(normalize("/t/acme/%2e%2e/bob/x").unwrap(), "/t/bob/x");
        assert_eq!(normalize("/t/acme/.%2E/bob").unwrap(), "/t/bob");
        assert_eq!(normalize("/t/acme/./x").unwrap(), "/t/acme/x");
        assert_eq!(normalize("/t/acme/x/..").unwrap(), "/t/acme/");
        assert_eq!(normalize("//t//acme///x").unwrap(), "/t/acme/x");
        assert_eq!(normalize("/..").unwrap_err(), PathError::AboveRoot);
        assert_eq!(normalize("/t/../../x").unwrap_err(), PathError::AboveRoot);
    }

    #[test]
    fn ambiguous_encodings_are_refused() {
        for bad in [
            "/t/acme%2f..%2fbob/",
            "/t/acme/%2F",
            "/t/acme\\..\\bob",
            "/t/acme/%5c",
            "/t/acme/%00",
            "/t/acme/%zz",
            "/t/acme/%2",
            "relative",
        ] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn double_encoding_stays_literal() {
        assert_eq!(
            normalize("/t/acme/%252e%252e/bob").unwrap(),
            "/t/acme/%252e%252e/bob"
        );
        assert_eq!(normalize("/t/acme/..;/bob").unwrap(), "/t/acme/..;/bob");
    }
}

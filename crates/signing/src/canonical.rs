//! What may go into a v2 payload, checked the same way by [`Signer`](crate::Signer) and
//! [`Verifier`](crate::Verifier).
//!
//! The payload is `METHOD path\n`, then `Name: value\n` per signed header, then the body. It
//! reads back one way only when the method and the names are HTTP tokens and the path and
//! the values hold no line break: otherwise bytes can move between a value and what follows
//! it (the next header, or the body), and two different requests share one signature. A
//! value with a space or tab at either end is refused too, because HTTP strips them in
//! transit: the receiver would check other bytes than were signed.

/// The part of a request that cannot go into a payload as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsignable {
    /// The method is not an HTTP token.
    Method,
    /// The path does not start with `/`.
    PathNotAbsolute,
    /// The path holds a CR or LF.
    Path,
    /// A header name is not an HTTP token, or its value holds a CR or LF or is padded.
    Header,
    /// A header to sign appears more than once (names compare in any case).
    DuplicateHeader,
}

/// Checks the method and path.
pub(crate) fn check_request_line(method: &str, path: &str) -> Result<(), Unsignable> {
    if !path.starts_with('/') {
        return Err(Unsignable::PathNotAbsolute);
    }
    if path.bytes().any(is_line_break) {
        return Err(Unsignable::Path);
    }
    if !is_token(method) {
        return Err(Unsignable::Method);
    }
    Ok(())
}

/// The one value of the header `name` among `headers` (names in any case), checked: `None`
/// when absent, [`Unsignable::DuplicateHeader`] when there are several, and
/// [`Unsignable::Header`] when `name` or the value cannot be signed.
pub(crate) fn signed_value<'a>(
    headers: &[(&str, &'a [u8])],
    name: &str,
) -> Result<Option<&'a [u8]>, Unsignable> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| *v);
    match (values.next(), values.next()) {
        (None, _) => Ok(None),
        (Some(_), Some(_)) => Err(Unsignable::DuplicateHeader),
        (Some(value), None) => {
            check_header(name, value)?;
            Ok(Some(value))
        }
    }
}

fn check_header(name: &str, value: &[u8]) -> Result<(), Unsignable> {
    let padded = |b: Option<&u8>| matches!(b, Some(b' ' | b'\t'));
    if !is_token(name)
        || value.iter().copied().any(is_line_break)
        || padded(value.first())
        || padded(value.last())
    {
        return Err(Unsignable::Header);
    }
    Ok(())
}

fn is_line_break(b: u8) -> bool {
    b == b'\r' || b == b'\n'
}

/// RFC 9110's `token`: one or more of letters, digits and ``!#$%&'*+-.^_`|~``.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A value the sender chose, as an error shows it: at most `max` characters, control
/// characters (a line break would forge a log line) replaced.
pub(crate) fn shown(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

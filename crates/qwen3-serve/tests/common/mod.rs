//! Helpers shared by the binary's HTTP tests.

/// Status and body of a raw HTTP/1.1 response (chunked framing left in: the tests search it).
pub fn status_and_body(raw: &str) -> (u16, String) {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (status, body)
}

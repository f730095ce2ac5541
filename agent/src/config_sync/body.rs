//! Reading configd's answers with a cap: the body is read chunk by chunk
//! and abandoned as soon as it passes `configd.max_response_bytes` (a
//! `Content-Length` above it is refused before any byte is read), and a
//! gzip body is decompressed no further than the same cap. So neither a
//! large namespace nor a gzip bomb can make the agent buffer more than the
//! cap, whatever configd (or something posing as it) sends.

use super::SyncError;
use std::io::Read;

/// The body of `resp`, decompressed when it says `Content-Encoding: gzip`;
/// with the bytes read on the wire. `what` names the answer in errors.
pub(super) async fn read(
    mut resp: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<(Vec<u8>, usize), SyncError> {
    let too_large = |detail: String| SyncError::TooLarge {
        what: format!("{what} {detail}"),
        key: "max_response_bytes",
        limit,
    };
    if let Some(len) = resp.content_length().filter(|l| *l > limit) {
        return Err(too_large(format!("({len} bytes announced)")));
    }
    let gzip = resp
        .headers()
        .get(reqwest::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let mut raw = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if (raw.len() + chunk.len()) as u64 > limit {
            return Err(too_large("(more on the wire)".into()));
        }
        raw.extend_from_slice(&chunk);
    }
    let wire = raw.len();
    if !gzip {
        return Ok((raw, wire));
    }
    let out = gunzip(&raw, limit).map_err(|e| match e {
        Gunzip::Over => too_large(format!("({wire} bytes of gzip, more once decompressed)")),
        Gunzip::Bad(e) => SyncError::Body(format!("gzip: {e}")),
    })?;
    Ok((out, wire))
}

#[derive(Debug)]
enum Gunzip {
    /// More than the limit once decompressed.
    Over,
    Bad(std::io::Error),
}

/// `raw` decompressed, reading at most `limit + 1` bytes of output.
fn gunzip(raw: &[u8], limit: u64) -> Result<Vec<u8>, Gunzip> {
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit as usize));
    flate2::read::GzDecoder::new(raw)
        .take(limit.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(Gunzip::Bad)?;
    if out.len() as u64 > limit {
        return Err(Gunzip::Over);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_limit() {
        // 64 MiB of zeros is about 64 KiB of gzip.
        let bomb = gz(&vec![0u8; 64 * 1024 * 1024]);
        assert!(bomb.len() < 128 * 1024, "{}", bomb.len());
        assert!(matches!(gunzip(&bomb, 1024 * 1024), Err(Gunzip::Over)));
        let small = gz(b"{\"to\":1}");
        assert_eq!(gunzip(&small, 8).unwrap(), b"{\"to\":1}");
        assert!(matches!(gunzip(&small, 7), Err(Gunzip::Over)));
        assert!(matches!(gunzip(b"not gzip", 100), Err(Gunzip::Bad(_))));
    }
}

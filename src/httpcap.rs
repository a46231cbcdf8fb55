//! Reading a server's response body with a size cap: every body the sidecar reads through
//! reqwest outside the probe and scrape streams (which count their own bytes) goes through
//! [`read_capped`], so no server can make it allocate without bound.

/// Why a capped read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// The body (or its `Content-Length`) is larger than the cap.
    #[error("response body larger than {max} bytes")]
    TooLarge { max: u64 },
    /// The body could not be read (reset, timeout, bad framing).
    #[error("reading the response body: {0}")]
    Body(String),
}

/// The largest JSON body read from `/v1/models`, `/tokenize`, `/health`-style endpoints.
pub const MAX_JSON_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// Reads `resp`'s whole body, failing with [`CapError::TooLarge`] as soon as more than `max`
/// bytes are announced or received (nothing beyond `max` is kept).
pub async fn read_capped(mut resp: reqwest::Response, max: u64) -> Result<Vec<u8>, CapError> {
    if let Some(len) = resp.content_length()
        && len > max
    {
        return Err(CapError::TooLarge { max });
    }
    let mut body = Vec::with_capacity(resp.content_length().unwrap_or(8 * 1024).min(max) as usize);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > max {
                    return Err(CapError::TooLarge { max });
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(CapError::Body(e.without_url().to_string())),
        }
    }
}

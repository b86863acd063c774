//! The gRPC edge: converts between protobuf and domain types, validates
//! input, and maps every error to a status in one place ([`ApiError`]).

pub mod campaigns;
mod convert;
pub mod dispatch;
mod error;
mod recipients;

use std::collections::BTreeMap;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use error::ApiError;

use crate::domain::{FieldViolation, Region};
use crate::engine::Engine;
use crate::progress::ProgressHub;
use crate::store::{Store, campaigns::RequestKey};

/// What every service needs.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub engine: Engine,
    pub hub: ProgressHub,
    /// Region for national-format numbers; `None` requires E.164.
    pub default_region: Option<Region>,
    /// Cancelled when the server begins shutting down; ends watch streams.
    pub shutdown: CancellationToken,
}

/// The longest idempotency key accepted.
const MAX_REQUEST_ID: usize = 200;

/// Checks an optional idempotency key and pairs it with the request's
/// fingerprint, so a replay can be told from a different request.
fn request_key(
    request_id: &str,
    fingerprint: impl FnOnce(&mut Sha256),
) -> Result<Option<RequestKey>, FieldViolation> {
    let request_id = request_id.trim();
    if request_id.is_empty() {
        return Ok(None);
    }
    if request_id.chars().count() > MAX_REQUEST_ID {
        return Err(FieldViolation::new(
            "request_id",
            format!("request_id is longer than {MAX_REQUEST_ID} characters"),
        ));
    }
    let mut hasher = Sha256::new();
    fingerprint(&mut hasher);
    Ok(Some(RequestKey {
        request_id: request_id.to_owned(),
        fingerprint: hex::encode(hasher.finalize()),
    }))
}

/// Feeds a field into a fingerprint, length-prefixed so fields cannot blur.
fn hash_field(hasher: &mut Sha256, value: &str) {
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value.as_bytes());
}

/// Feeds a variables map in key order, so the fingerprint ignores map order.
fn hash_map(hasher: &mut Sha256, map: &std::collections::HashMap<String, String>) {
    let sorted: BTreeMap<_, _> = map.iter().collect();
    hasher.update((sorted.len() as u64).to_le_bytes());
    for (key, value) in sorted {
        hash_field(hasher, key);
        hash_field(hasher, value);
    }
}

/// Page tokens are opaque to callers: the last id of the page, encoded.
fn encode_page_token(last_id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(last_id)
}

fn decode_page_token(token: &str) -> Result<Option<String>, FieldViolation> {
    if token.is_empty() {
        return Ok(None);
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .filter(|id| uuid::Uuid::parse_str(id).is_ok())
        .map(Some)
        .ok_or_else(|| {
            FieldViolation::new("page_token", "page_token is not one this server issued")
        })
}

/// Resolves a page size: 0 means `default`, anything else must be 1..=max.
fn page_size(requested: i32, default: u64, max: u64) -> Result<u64, FieldViolation> {
    match requested {
        0 => Ok(default),
        n if n > 0 && (n as u64) <= max => Ok(n as u64),
        n => Err(FieldViolation::new(
            "page_size",
            format!("page_size must be between 1 and {max}, not {n}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_forgeries() {
        let id = uuid::Uuid::now_v7().to_string();
        assert_eq!(
            decode_page_token(&encode_page_token(&id)).unwrap(),
            Some(id)
        );
        assert_eq!(decode_page_token("").unwrap(), None);
        assert!(decode_page_token("not-a-token").is_err());
    }

    #[test]
    fn page_sizes_default_and_stay_in_range() {
        assert_eq!(page_size(0, 50, 500).unwrap(), 50);
        assert_eq!(page_size(7, 50, 500).unwrap(), 7);
        assert!(page_size(-1, 50, 500).is_err());
        assert!(page_size(501, 50, 500).is_err());
    }
}

//! Wall-clock time as milliseconds since the Unix epoch, the unit the store
//! keeps every timestamp in.

/// Milliseconds since the Unix epoch, UTC.
pub type Millis = i64;

/// The current time in milliseconds since the Unix epoch.
pub fn now_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

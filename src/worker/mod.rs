//! The workers: lease a content reference, fetch its blob, split it into records, forward
//! them, and complete the item once every record is acked (DESIGN.md item 4).

pub mod events;
mod outcome;
pub mod pool;
pub mod splitter;

/// The engine's message limit for callers without a configuration (tests, benches,
/// fuzzing): 4 MiB (4,194,304 bytes), gRPC's default receive limit and the default of
/// `engine.max_message_bytes`. The workers take theirs from the configuration.
pub const ENGINE_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// What a Log's fields other than `raw` may take of one message, in bytes: 64 KiB. They
/// are the id (64 hex digits), the data type, the data source (the group name), an RFC 3339
/// timestamp, the UTMStack tenant id and protobuf's tags and lengths: well under 1 KiB in
/// practice, so the margin covers long group names with room to spare.
pub const LOG_OTHER_FIELDS_MARGIN_BYTES: usize = 64 * 1024;

/// The largest record forwarded as one Log, in bytes: [`ENGINE_MAX_MESSAGE_BYTES`] less
/// [`LOG_OTHER_FIELDS_MARGIN_BYTES`], the splitter's limit where there is no configuration
/// (the workers use `forward::log::max_raw_bytes`).
pub const MAX_RECORD_BYTES: usize = ENGINE_MAX_MESSAGE_BYTES - LOG_OTHER_FIELDS_MARGIN_BYTES;

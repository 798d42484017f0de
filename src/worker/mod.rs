//! The workers: lease a content reference, fetch its blob, split it into records, forward
//! them, and complete the item once every record is acked (DESIGN.md item 4).

pub mod pool;
pub mod splitter;

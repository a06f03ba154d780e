//! Comparing a copy with its source record: content (key, value, headers) always; the
//! timestamp only where the target keeps the source's. A target topic with
//! `message.timestamp.type = LogAppendTime` stamps every record with the broker's time, so
//! its copies cannot carry the source's timestamp: that is reported, not called altered.

use rdkafka::message::Timestamp;

use super::record::Record;

/// What verify remembers of a record to compare it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// `content_digest`: key, value and compared headers.
    pub content: u64,
    pub timestamp: Timestamp,
}

impl Fingerprint {
    pub fn of(m: &Record<'_>, ignore: &[&str]) -> Fingerprint {
        Fingerprint {
            content: m.content_digest(ignore),
            timestamp: m.timestamp(),
        }
    }
}

/// How a copy compares with its source record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Same,
    /// Same content; the target set its own timestamp (LogAppendTime), so the source's could
    /// not be kept and was not compared.
    SameTimestampNotKept,
    Altered,
}

/// Compares a copy (`target`) with its source record.
pub fn compare(source: &Fingerprint, target: &Fingerprint) -> Comparison {
    if source.content != target.content {
        return Comparison::Altered;
    }
    match target.timestamp {
        Timestamp::LogAppendTime(_) => Comparison::SameTimestampNotKept,
        t if t.to_millis() != source.timestamp.to_millis() => Comparison::Altered,
        _ => Comparison::Same,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(content: u64, timestamp: Timestamp) -> Fingerprint {
        Fingerprint { content, timestamp }
    }

    #[test]
    fn timestamps_are_compared_only_where_the_target_keeps_them() {
        let src = fp(7, Timestamp::CreateTime(1_000));
        // Kept: compared.
        assert_eq!(
            compare(&src, &fp(7, Timestamp::CreateTime(1_000))),
            Comparison::Same
        );
        assert_eq!(
            compare(&src, &fp(7, Timestamp::CreateTime(1_001))),
            Comparison::Altered
        );
        // The target stamped its own time (LogAppendTime): not compared, and said so.
        assert_eq!(
            compare(&src, &fp(7, Timestamp::LogAppendTime(99_999))),
            Comparison::SameTimestampNotKept
        );
        // Content is always compared.
        assert_eq!(
            compare(&src, &fp(8, Timestamp::LogAppendTime(99_999))),
            Comparison::Altered
        );
        assert_eq!(
            compare(&src, &fp(8, Timestamp::CreateTime(1_000))),
            Comparison::Altered
        );
        // A source topic with LogAppendTime: its copies carry that time as CreateTime.
        let src = fp(7, Timestamp::LogAppendTime(5_000));
        assert_eq!(
            compare(&src, &fp(7, Timestamp::CreateTime(5_000))),
            Comparison::Same
        );
        assert_eq!(
            compare(
                &fp(7, Timestamp::NotAvailable),
                &fp(7, Timestamp::NotAvailable)
            ),
            Comparison::Same
        );
    }
}

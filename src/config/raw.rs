//! The routing file as written: serde structures with spans, unknown keys refused.
//! Nothing here is trusted; `check` turns it into a `Config`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::filter::{RawDeadLetter, RawFilter, RawHeaders, RawValidate};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub checkpoints: Option<RawCheckpoints>,
    pub limits: Option<RawLimits>,
    pub run: Option<RawRun>,
    pub http: Option<RawHttp>,
    pub verify: Option<RawVerify>,
    pub group: Option<Spanned<RawGroup>>,
    pub delivery: Option<Spanned<RawDelivery>>,
    /// Default for every route's `create_target_topics`.
    pub create_target_topics: Option<Spanned<bool>>,
    /// Default dead-letter destination for every route.
    pub dead_letter: Option<Spanned<RawDeadLetter>>,
    #[serde(default)]
    pub clusters: BTreeMap<Spanned<String>, Spanned<RawCluster>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RawRoute>>,
    /// `[files.NAME]`: dump files a route can read instead of a cluster (`kmirror import`).
    #[serde(default)]
    pub files: BTreeMap<Spanned<String>, Spanned<RawFileSource>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileSource {
    pub path: Spanned<String>,
    pub format: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
    pub rejects: Option<Spanned<String>>,
    pub fields: Option<Spanned<RawFields>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFields {
    pub key: Option<Spanned<String>>,
    pub value: Option<Spanned<String>>,
    pub headers: Option<Spanned<String>>,
    pub timestamp: Option<Spanned<String>>,
    pub partition: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheckpoints {
    pub dir: Option<Spanned<String>>,
    pub interval: Option<Spanned<String>>,
    pub job: Option<Spanned<String>>,
    pub max_unwritten: Option<Spanned<String>>,
    pub store: Option<Spanned<String>>,
    pub topic: Option<Spanned<String>>,
    pub cluster: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    pub max_messages_per_sec: Option<Spanned<i64>>,
    pub max_bytes_per_sec: Option<Spanned<toml::Value>>,
    pub max_in_flight_bytes: Option<Spanned<toml::Value>>,
    pub max_in_flight_bytes_per_partition: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    pub connect_timeout: Option<Spanned<String>>,
    pub shutdown_timeout: Option<Spanned<String>>,
    pub stall_timeout: Option<Spanned<String>>,
    pub metadata_refresh: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    pub listen: Option<Spanned<String>>,
    pub stalled_not_ready: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub id: Option<Spanned<String>>,
    pub instance_id: Option<Spanned<String>>,
    pub session_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    pub guarantee: Option<Spanned<String>>,
    pub commit_interval: Option<Spanned<String>>,
    pub max_records_per_transaction: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVerify {
    pub interval: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCluster {
    pub bootstrap: Option<Spanned<String>>,
    /// A local directory: the cluster is an archive (`crate::archive`), not brokers.
    pub archive: Option<Spanned<String>>,
    #[serde(default)]
    pub properties: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub name: Spanned<String>,
    pub source: Spanned<String>,
    pub topics: Option<Spanned<Vec<Spanned<String>>>>,
    pub topic_regex: Option<Spanned<String>>,
    pub target: Spanned<String>,
    pub target_topic: Option<Spanned<String>>,
    pub partitioning: Option<Spanned<String>>,
    pub start: Option<Spanned<toml::Value>>,
    pub end: Option<Spanned<toml::Value>>,
    pub max_messages_per_sec: Option<Spanned<i64>>,
    pub max_bytes_per_sec: Option<Spanned<toml::Value>>,
    pub on_offset_out_of_range: Option<Spanned<String>>,
    pub create_target_topics: Option<Spanned<bool>>,
    pub provenance: Option<Spanned<bool>>,
    pub filter: Option<Spanned<RawFilter>>,
    pub validate: Option<RawValidate>,
    pub headers: Option<RawHeaders>,
    pub on_error: Option<Spanned<String>>,
    pub dead_letter: Option<Spanned<RawDeadLetter>>,
}

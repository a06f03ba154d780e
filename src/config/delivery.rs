//! `[delivery]`: the job's delivery guarantee (at-least-once, the default, or exactly-once,
//! `crate::copy::transaction`) and how large its transactions grow. Checked here, apart from
//! `check`, because exactly-once's rules look across the file: every route's target, its
//! dead-letter destination and the checkpoint store must be one cluster, so one transaction
//! can hold the copied records and the checkpoint records that cover them.

use std::collections::BTreeMap;
use std::time::Duration;

use super::diag::Diagnostics;
use super::raw::{RawConfig, RawDelivery};
use super::{value, RouteConfig, StoreSettings};

/// Default `[delivery] commit_interval`.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Default `[delivery] max_records_per_transaction`.
pub const DEFAULT_MAX_RECORDS_PER_TRANSACTION: u64 = 100_000;

/// `[delivery] guarantee`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Positions are checkpointed after the target acknowledged; a crash can duplicate.
    #[default]
    AtLeastOnce,
    /// Copied records and the checkpoint records covering them commit in one transaction.
    ExactlyOnce,
}

/// `[delivery]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    pub guarantee: Guarantee,
    /// Exactly-once: a transaction commits this often (the latency a read_committed reader
    /// of the target sees, at most, on top of the copy's).
    pub commit_interval: Duration,
    /// Exactly-once: a transaction commits early once it holds this many records; readers
    /// wait for the commit rather than grow it.
    pub max_records_per_transaction: u64,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        DeliverySettings {
            guarantee: Guarantee::AtLeastOnce,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            max_records_per_transaction: DEFAULT_MAX_RECORDS_PER_TRANSACTION,
        }
    }
}

impl DeliverySettings {
    pub fn exactly_once(&self) -> bool {
        self.guarantee == Guarantee::ExactlyOnce
    }
}

/// Checks `[delivery]` against the routes and the checkpoint store; problems go to `d`.
pub(super) fn check_delivery<A>(
    raw: &RawConfig,
    store: &StoreSettings,
    routes: &[RouteConfig],
    clusters: &BTreeMap<String, super::ClusterConfig>,
    archives: &BTreeMap<String, A>,
    d: &mut Diagnostics<'_>,
) -> DeliverySettings {
    let mut s = DeliverySettings::default();
    let Some(table) = &raw.delivery else {
        return s;
    };
    let RawDelivery {
        guarantee,
        commit_interval,
        max_records_per_transaction,
    } = table.get_ref();
    if let Some(g) = guarantee {
        match g.get_ref().as_str() {
            "at_least_once" => {}
            "exactly_once" => s.guarantee = Guarantee::ExactlyOnce,
            other => d.push(
                &g.span(),
                "delivery.guarantee",
                format!("\"{other}\" is refused: use \"at_least_once\" (the default) or \"exactly_once\""),
            ),
        }
    }
    if let Some(v) = commit_interval {
        match value::parse_duration(v.get_ref()) {
            Ok(x) if x >= Duration::from_millis(10) && x <= Duration::from_secs(600) => {
                s.commit_interval = x
            }
            Ok(_) => d.push(
                &v.span(),
                "delivery.commit_interval",
                format!("\"{}\" is refused: must be between 10ms and 10m (a transaction left open longer is aborted by the broker's transaction.timeout)", v.get_ref()),
            ),
            Err(m) => d.push(&v.span(), "delivery.commit_interval", m),
        }
    }
    if let Some(v) = max_records_per_transaction {
        match *v.get_ref() {
            n @ 1..=10_000_000 => s.max_records_per_transaction = n as u64,
            n => d.push(
                &v.span(),
                "delivery.max_records_per_transaction",
                format!("{n} is refused: must be between 1 and 10000000"),
            ),
        }
    }
    if !s.exactly_once() {
        for (key, set) in [
            (
                "commit_interval",
                commit_interval.as_ref().map(|v| v.span()),
            ),
            (
                "max_records_per_transaction",
                max_records_per_transaction.as_ref().map(|v| v.span()),
            ),
        ] {
            if let Some(span) = set {
                d.push(
                    &span,
                    format!("delivery.{key}"),
                    "applies only to guarantee = \"exactly_once\"; set it or remove this key",
                );
            }
        }
        return s;
    }
    let at = guarantee.as_ref().map(|g| g.span()).unwrap_or(table.span());
    let key = "delivery.guarantee";
    let cluster = match store {
        StoreSettings::Kafka { cluster, .. } => cluster.clone(),
        StoreSettings::File => {
            d.push(&at, key, "exactly_once needs [checkpoints] store = \"kafka\" on the routes' target cluster: the checkpoint records must commit in the same transaction as the copied records, and a file cannot join a Kafka transaction");
            return s;
        }
    };
    let route_span = |name: &str| {
        raw.routes
            .iter()
            .enumerate()
            .find(|(_, r)| r.get_ref().name.get_ref() == name)
    };
    // Aborted source transactions must never be copied, and verify must see the target as
    // its read_committed readers do: no cluster may read uncommitted records.
    for (name, c) in clusters {
        if let Some(v) = c.properties.get("isolation.level") {
            if v != "read_committed" {
                let span = raw
                    .clusters
                    .iter()
                    .find(|(k, _)| k.get_ref() == name)
                    .and_then(|(_, rc)| {
                        rc.get_ref()
                            .properties
                            .iter()
                            .find(|(k, _)| k.get_ref() == "isolation.level")
                            .map(|(_, v)| v.span())
                    })
                    .unwrap_or(at.clone());
                d.push(&span, format!("clusters.{name}.properties.isolation.level"), format!("\"{v}\" is refused with exactly_once: the copy would take records of aborted source transactions, and verify would count aborted target records; leave it at read_committed (the default)"));
            }
        }
    }
    for r in routes {
        let (i, span) = match route_span(&r.name) {
            Some((i, raw_r)) => (i, raw_r.get_ref().target.span()),
            None => (0, at.clone()),
        };
        if archives.contains_key(&r.source) {
            d.push(&span, format!("routes[{i}].source"), format!("route \"{}\" reads the archive \"{}\": a restore cannot run exactly_once (an archive keeps no transaction); restore with guarantee = \"at_least_once\" and check with `verify --fail-on-duplicates`", r.name, r.source));
        }
        if archives.contains_key(&r.target) {
            d.push(&span, format!("routes[{i}].target"), format!("route \"{}\" writes to the archive \"{}\": an archive (files or S3 objects) cannot join a Kafka transaction; exactly_once copies only between clusters", r.name, r.target));
        } else if r.target != cluster {
            d.push(&span, format!("routes[{i}].target"), format!("route \"{}\" writes to cluster \"{}\" but the checkpoints are kept on \"{cluster}\": a transaction spans one cluster, so exactly_once needs every route's target and [checkpoints] cluster to be the same", r.name, r.target));
        }
        if let Some(dl) = &r.dead_letter {
            if dl.cluster != cluster {
                let dl_span = raw
                    .routes
                    .get(i)
                    .and_then(|raw_r| raw_r.get_ref().dead_letter.as_ref().map(|x| x.span()))
                    .or_else(|| raw.dead_letter.as_ref().map(|x| x.span()))
                    .unwrap_or(span.clone());
                d.push(&dl_span, format!("routes[{i}].dead_letter.cluster"), format!("route \"{}\" dead-letters to cluster \"{}\", not the target \"{cluster}\": a dead-letter write there cannot join the copy's transaction, so a crash could lose or repeat it; put the dead-letter topic on \"{cluster}\"", r.name, dl.cluster));
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::{Config, ConfigError};
    use super::*;

    const CLUSTERS: &str = r#"
[clusters.a]
bootstrap = "127.0.0.1:9092"
[clusters.b]
bootstrap = "127.0.0.1:9093"
[clusters.c]
bootstrap = "127.0.0.1:9094"
[clusters.arch]
archive = "dump"
"#;

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_str(
            Path::new("/etc/kmirror/eos.toml"),
            format!("{text}\n{CLUSTERS}"),
            &|_| None,
        )
    }

    /// Every diagnostic, one a line, as `kmirror check` prints them.
    fn refused(text: &str) -> String {
        match load(text) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e
                .diagnostics()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }

    const ROUTE_AB: &str = r#"
[[routes]]
name = "orders"
source = "a"
topics = ["orders"]
target = "b"
"#;

    #[test]
    fn at_least_once_is_the_default_and_exactly_once_takes_its_settings() {
        let c = load(ROUTE_AB).unwrap();
        assert_eq!(c.delivery, DeliverySettings::default());
        assert!(!c.delivery.exactly_once());
        let c = load(&format!(
            "[checkpoints]\nstore = \"kafka\"\n[delivery]\nguarantee = \"exactly_once\"\ncommit_interval = \"250ms\"\nmax_records_per_transaction = 2000\n{ROUTE_AB}"
        ))
        .unwrap();
        assert_eq!(
            c.delivery,
            DeliverySettings {
                guarantee: Guarantee::ExactlyOnce,
                commit_interval: Duration::from_millis(250),
                max_records_per_transaction: 2000,
            }
        );
    }

    /// Replicas (`[group]`) may copy exactly-once: each with its own transactional producer
    /// (`copy::transaction::transactional_id`).
    #[test]
    fn exactly_once_is_accepted_with_a_group() {
        let c = load(&format!(
            "[checkpoints]\nstore = \"kafka\"\n[group]\nid = \"g\"\ninstance_id = \"pod-1\"\n[delivery]\nguarantee = \"exactly_once\"\n{ROUTE_AB}"
        ))
        .unwrap();
        assert!(c.delivery.exactly_once());
        assert_eq!(c.group.as_ref().unwrap().instance_id, "pod-1");
        assert_eq!(
            crate::copy::transaction::transactional_id_for(&c),
            "kmirror-eos-eos-pod-1"
        );
    }

    #[test]
    fn exactly_once_with_the_file_store_is_refused_where_it_is_asked_for() {
        let e = refused(&format!(
            "[delivery]\nguarantee = \"exactly_once\"\n{ROUTE_AB}"
        ));
        assert_eq!(
            e,
            "/etc/kmirror/eos.toml:2:13: delivery.guarantee: exactly_once needs [checkpoints] store = \"kafka\" on the routes' target cluster: the checkpoint records must commit in the same transaction as the copied records, and a file cannot join a Kafka transaction"
        );
    }

    #[test]
    fn a_target_or_dead_letter_off_the_checkpoint_cluster_or_an_archive_is_refused() {
        let text = r#"[checkpoints]
store = "kafka"
cluster = "b"
[delivery]
guarantee = "exactly_once"

[[routes]]
name = "to-c"
source = "a"
topics = ["x"]
target = "c"

[[routes]]
name = "dlq-c"
source = "a"
topics = ["y"]
target = "b"
on_error = "dead_letter"
dead_letter = { cluster = "c", topic = "dlq" }

[[routes]]
name = "dump"
source = "a"
topics = ["z"]
target = "arch"
"#;
        let e = refused(text);
        assert!(
            e.contains("/etc/kmirror/eos.toml:11:10: routes[0].target: route \"to-c\" writes to cluster \"c\" but the checkpoints are kept on \"b\": a transaction spans one cluster"),
            "{e}"
        );
        assert!(
            e.contains("/etc/kmirror/eos.toml:19:15: routes[1].dead_letter.cluster: route \"dlq-c\" dead-letters to cluster \"c\", not the target \"b\": a dead-letter write there cannot join the copy's transaction"),
            "{e}"
        );
        assert!(
            e.contains("/etc/kmirror/eos.toml:25:10: routes[2].target: route \"dump\" writes to the archive \"arch\": an archive (files or S3 objects) cannot join a Kafka transaction"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_and_settings_without_exactly_once_are_refused() {
        let e = refused(&format!(
            "[delivery]\nguarantee = \"twice\"\ncommit_interval = \"1h\"\nmax_records_per_transaction = 0\n{ROUTE_AB}"
        ));
        assert!(e.contains("2:13: delivery.guarantee: \"twice\" is refused: use \"at_least_once\" (the default) or \"exactly_once\""), "{e}");
        assert!(
            e.contains(
                "3:19: delivery.commit_interval: \"1h\" is refused: must be between 10ms and 10m"
            ),
            "{e}"
        );
        assert!(e.contains("4:31: delivery.max_records_per_transaction: 0 is refused: must be between 1 and 10000000"), "{e}");
        let e = refused(&format!("[delivery]\ncommit_interval = \"1s\"\n{ROUTE_AB}"));
        assert_eq!(e, "/etc/kmirror/eos.toml:2:19: delivery.commit_interval: applies only to guarantee = \"exactly_once\"; set it or remove this key");
    }

    #[test]
    fn reading_uncommitted_records_is_refused_with_exactly_once() {
        let text = format!(
            "[checkpoints]\nstore = \"kafka\"\n[delivery]\nguarantee = \"exactly_once\"\n{ROUTE_AB}"
        );
        // Cluster a (the source) reads uncommitted records.
        let e = match Config::from_str(
            Path::new("/etc/kmirror/eos.toml"),
            format!("{text}\n{}", CLUSTERS.replace("bootstrap = \"127.0.0.1:9092\"", "bootstrap = \"127.0.0.1:9092\"\nproperties = { \"isolation.level\" = \"read_uncommitted\" }")),
            &|_| None,
        ) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        };
        assert!(
            e.contains("clusters.a.properties.isolation.level: \"read_uncommitted\" is refused with exactly_once: the copy would take records of aborted source transactions"),
            "{e}"
        );
    }
}

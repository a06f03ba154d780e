//! `[group]`: replicas of one routing file sharing the source partitions through a Kafka
//! consumer group (`crate::copy::ownership`). Checked here, apart from `check`, because
//! its rules look across the file: the checkpoint store, the routes' sources and ends.

use std::collections::BTreeMap;

use std::time::Duration;

use toml::Spanned;

use super::diag::Diagnostics;
use super::raw::RawGroup;
use super::{value, EndPosition, RouteConfig, StoreSettings};

/// Default `[group] session_timeout`: how long a member may go unheard before the group
/// gives its partitions to the others (the failover time), and how long a member that
/// cannot confirm its membership keeps copying (its lease).
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable `[group] instance_id` defaults to (a pod's name in Kubernetes).
pub const INSTANCE_ID_ENV: &str = "HOSTNAME";

/// `[group]`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSettings {
    /// The consumer group's `group.id` on the source cluster.
    pub id: String,
    /// `group.instance.id` (static membership): stable across restarts of one replica, so a
    /// restart within `session_timeout` moves no partition. Unique per replica.
    pub instance_id: String,
    pub session_timeout: Duration,
    /// The source cluster the group lives on (every route reads it).
    pub cluster: String,
}

/// Checks `[group]` against the rest of the file; `None` without one or when it is wrong
/// (every problem pushed to `d`).
pub(super) fn check_group(
    raw: Option<&Spanned<RawGroup>>,
    store: &StoreSettings,
    routes: &[RouteConfig],
    archives: &BTreeMap<String, crate::archive::Root>,
    env: &dyn Fn(&str) -> Option<String>,
    d: &mut Diagnostics<'_>,
) -> Option<GroupSettings> {
    let raw = raw?;
    let table = raw.span();
    let g = raw.get_ref();
    let mut ok = true;
    let id = match &g.id {
        Some(v) if valid_id(v.get_ref()) => Some(v.get_ref().clone()),
        Some(v) => {
            d.push(
                &v.span(),
                "group.id",
                format!(
                    "\"{}\" is refused: use letters, digits, '.', '_' and '-' (at most 200)",
                    v.get_ref()
                ),
            );
            None
        }
        None => {
            d.push(
                &table,
                "group.id",
                "missing: name the consumer group the replicas share, e.g. id = \"kmirror-dr\"",
            );
            None
        }
    };
    let instance_id = match &g.instance_id {
        Some(v) => {
            match value::interpolate_env(v.get_ref(), env) {
                Ok(s) if valid_id(&s) => Some(s),
                Ok(s) => {
                    d.push(&v.span(), "group.instance_id", format!("\"{s}\" is refused: use letters, digits, '.', '_' and '-' (at most 200)"));
                    None
                }
                Err(m) => {
                    d.push(&v.span(), "group.instance_id", m);
                    None
                }
            }
        }
        None => match env(INSTANCE_ID_ENV).filter(|s| valid_id(s)) {
            Some(s) => Some(s),
            None => {
                d.push(&table, "group.instance_id", format!("missing, and ${INSTANCE_ID_ENV} is not set to a usable name: give each replica a stable id, e.g. instance_id = \"${{POD_NAME}}\""));
                None
            }
        },
    };
    let mut session_timeout = DEFAULT_SESSION_TIMEOUT;
    if let Some(v) = &g.session_timeout {
        match value::parse_duration(v.get_ref()) {
            Ok(x) if x >= Duration::from_secs(1) && x <= Duration::from_secs(3600) => {
                session_timeout = x
            }
            Ok(_) => {
                ok = false;
                d.push(
                    &v.span(),
                    "group.session_timeout",
                    format!("\"{}\" is refused: must be between 1s and 1h", v.get_ref()),
                );
            }
            Err(m) => {
                ok = false;
                d.push(&v.span(), "group.session_timeout", m);
            }
        }
    }
    if !matches!(store, StoreSettings::Kafka { .. }) {
        ok = false;
        d.push(&table, "group", "replicas share no disk: [group] needs [checkpoints] store = \"kafka\" (checkpoints in a compacted topic every replica reads)");
    }
    let sources: std::collections::BTreeSet<&str> =
        routes.iter().map(|r| r.source.as_str()).collect();
    if sources.len() > 1 {
        ok = false;
        d.push(
            &table,
            "group",
            format!(
                "the routes read several source clusters ({}); the group lives on one: run one job per source cluster",
                sources.into_iter().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    for r in routes {
        // An archive is a directory on one machine: replicas on several would each dump
        // (or restore) their share into their own disk, and no one holds the whole archive.
        for (side, name) in [("source", &r.source), ("target", &r.target)] {
            if archives.contains_key(name) {
                ok = false;
                d.push(&table, "group", format!("route \"{}\": its {side} \"{name}\" is an archive, a directory on one machine; replicas share no disk: dump or restore without [group]", r.name));
            }
        }
        if r.end != EndPosition::None {
            ok = false;
            d.push(&table, "group", format!("route \"{}\" has an `end`: replicas share routes that follow (no `end`); run a bounded copy without [group]", r.name));
        }
    }
    let cluster = routes.first().map(|r| r.source.clone())?;
    Some(GroupSettings {
        id: id?,
        instance_id: instance_id?,
        session_timeout,
        cluster,
    })
    .filter(|_| ok)
}

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::path::Path;

    fn load(group: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let text = format!(
            r#"[clusters.src]
bootstrap = "127.0.0.1:9"
[clusters.dst]
bootstrap = "127.0.0.1:9"
[checkpoints]
store = "kafka"
{group}
[[routes]]
name = "r"
source = "src"
topics = ["orders"]
target = "dst"
"#
        );
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_str(Path::new("g.toml"), text, &|k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .map_err(|e| e.to_string())
    }

    #[test]
    fn instance_id_defaults_to_the_host_name_and_session_timeout_to_30s() {
        let c = load("[group]\nid = \"g\"", &[("HOSTNAME", "pod-1")]).unwrap();
        let g = c.group.unwrap();
        assert_eq!(
            (g.id.as_str(), g.instance_id.as_str(), g.session_timeout),
            ("g", "pod-1", DEFAULT_SESSION_TIMEOUT)
        );
        assert_eq!(g.cluster, "src");
        let c = load(
            "[group]\nid = \"g\"\ninstance_id = \"${POD}\"\nsession_timeout = \"6s\"",
            &[("POD", "mirror-0"), ("HOSTNAME", "x")],
        )
        .unwrap();
        let g = c.group.unwrap();
        assert_eq!(g.instance_id, "mirror-0");
        assert_eq!(g.session_timeout, Duration::from_secs(6));
        assert!(load("", &[]).unwrap().group.is_none());
    }

    #[test]
    fn without_an_instance_id_or_host_name_the_group_is_refused() {
        let e = load("[group]\nid = \"g\"", &[]).unwrap_err();
        assert!(e.contains("g.toml:7:1: group.instance_id: missing"), "{e}");
    }
}

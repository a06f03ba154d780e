//! The (topic, partition)s a reader (`source_partition::Reader`) reads and the copy tasks on
//! each: built at the start, grown when partitions are found mid-run (`discovery`).

use std::collections::BTreeSet;

use super::task::CopyTask;

/// The (topic, partition)s a reader reads and the tasks on each, indexed densely: a topic
/// name becomes a topic index once (the last one cached, as records of one partition come
/// in runs), then the partition indexes a `Vec`. The per-record lookup neither allocates
/// nor walks a tree, however many topics the reader has.
pub(super) struct Partitions {
    pub(super) topics: Vec<String>,
    pub(super) index: std::collections::HashMap<String, usize>,
    /// `[topic][partition]` -> indices of the tasks on it (empty: not read here).
    pub(super) tasks: Vec<Vec<Vec<usize>>>,
    /// Every (topic, partition) read, in (topic, partition) order.
    pub(super) all: Vec<(usize, i32)>,
    last: std::cell::Cell<usize>,
}

impl Partitions {
    pub(super) fn new(tasks: &[CopyTask]) -> Self {
        let topics: Vec<String> = tasks
            .iter()
            .map(|t| t.plan.topic.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let index: std::collections::HashMap<String, usize> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i))
            .collect();
        let mut by: Vec<Vec<Vec<usize>>> = vec![Vec::new(); topics.len()];
        for (i, t) in tasks.iter().enumerate() {
            let parts = &mut by[index[&t.plan.topic]];
            let p = t.plan.partition.max(0) as usize;
            if parts.len() <= p {
                parts.resize(p + 1, Vec::new());
            }
            parts[p].push(i);
        }
        let all = by
            .iter()
            .enumerate()
            .flat_map(|(ti, parts)| {
                parts
                    .iter()
                    .enumerate()
                    .filter(|(_, idx)| !idx.is_empty())
                    .map(move |(p, _)| (ti, p as i32))
            })
            .collect();
        Partitions {
            topics,
            index,
            tasks: by,
            all,
            last: std::cell::Cell::new(0),
        }
    }

    pub(super) fn topic_index(&self, name: &str) -> Option<usize> {
        let last = self.last.get();
        if self.topics.get(last).is_some_and(|t| t == name) {
            return Some(last);
        }
        let ti = *self.index.get(name)?;
        self.last.set(ti);
        Some(ti)
    }

    /// The tasks on (topic index, partition); empty if none.
    pub(super) fn get(&self, ti: usize, p: i32) -> &[usize] {
        usize::try_from(p)
            .ok()
            .and_then(|p| self.tasks.get(ti)?.get(p))
            .map_or(&[], Vec::as_slice)
    }

    /// The topic index and tasks of a record's (topic, partition).
    pub(super) fn lookup(&self, topic: &str, p: i32) -> Option<(usize, &[usize])> {
        let ti = self.topic_index(topic)?;
        Some((ti, self.get(ti, p)))
    }

    /// Adds `tasks[from..]` (found mid-run). Topic indexes already given stay as they are
    /// (source error episodes are keyed by them).
    pub(super) fn add(&mut self, tasks: &[CopyTask], from: usize) {
        for (i, t) in tasks.iter().enumerate().skip(from) {
            let ti = match self.index.get(&t.plan.topic) {
                Some(&ti) => ti,
                None => {
                    self.topics.push(t.plan.topic.clone());
                    self.index
                        .insert(t.plan.topic.clone(), self.topics.len() - 1);
                    self.tasks.push(Vec::new());
                    self.topics.len() - 1
                }
            };
            let p = t.plan.partition.max(0) as usize;
            let parts = &mut self.tasks[ti];
            if parts.len() <= p {
                parts.resize(p + 1, Vec::new());
            }
            if parts[p].is_empty() {
                self.all.push((ti, p as i32));
            }
            parts[p].push(i);
        }
        self.all.sort_unstable();
    }
}

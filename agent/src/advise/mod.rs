//! `egret advise networkpolicy`: NetworkPolicies (and optionally
//! CiliumNetworkPolicies) from what the workloads were seen doing.
//!
//! records (audit log lines, learned profiles) → model (workload identity,
//! destination classes) → cidr (aggregation) → render (YAML with comments)
//! → output (stdout, files per namespace) or diff (against a directory).
pub mod cidr;
pub mod command;
pub mod diff;
pub mod model;
pub mod records;
pub mod render;
pub mod yaml;

#[cfg(test)]
mod evaluator;
#[cfg(test)]
mod tests;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use model::{Inventory, LabelPolicy, Profiles};
use records::{ReadStats, Window};
use render::{Document, Kind, RenderOptions};

#[derive(Debug, thiserror::Error)]
pub enum AdviseError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a pod/Service list: {message}", path.display())]
    Inventory { path: PathBuf, message: String },
    #[error("{}: {message}", path.display())]
    Policy { path: PathBuf, message: String },
    #[error("{}: not an Egret profile: {message}", path.display())]
    Profile { path: PathBuf, message: String },
}

/// Everything the command line decides.
pub struct Options {
    pub from: Vec<PathBuf>,
    pub profiles: Vec<PathBuf>,
    pub window: Window,
    pub pods: Option<PathBuf>,
    pub labels: LabelPolicy,
    pub render: RenderOptions,
    /// Only workloads of these namespaces (all when empty).
    pub namespaces: BTreeSet<String>,
}

pub struct Advice {
    pub documents: Vec<Document>,
    pub stats: ReadStats,
    /// Workloads whose pods carry no stable label: a selector `{}` would
    /// pick every pod of the namespace, so no policy is written for them.
    pub unlabelled: Vec<String>,
    /// Observations not kept past the destination bound.
    pub dropped: u64,
}

pub fn advise(opts: &Options) -> Result<Advice, AdviseError> {
    let inventory = match &opts.pods {
        Some(path) => Inventory::load(path, &opts.labels)?,
        None => Inventory::default(),
    };
    let mut profiles = Profiles::default();
    let mut stats = ReadStats::default();
    let wanted = |ns: &str| opts.namespaces.is_empty() || opts.namespaces.contains(ns);
    records::read_all(&opts.from, opts.window, &mut stats, &mut |obs| {
        if wanted(&obs.namespace) {
            profiles.observe(obs, &opts.labels, &inventory, &opts.render.dns);
        }
    })?;
    for path in &opts.profiles {
        let profile = crate::baseline::store::ProfileFile::load(path).map_err(|message| {
            AdviseError::Profile {
                path: path.clone(),
                message,
            }
        })?;
        for workload in profile.workloads {
            if !wanted(&workload.key.namespace) {
                continue;
            }
            let key = model::WorkloadKey {
                labels: opts.labels.stable(&workload.key.labels),
                namespace: workload.key.namespace,
            };
            for d in workload.destinations {
                let (peer, port) = inventory.classify(&opts.render.dns, d.ip, d.port, d.proto);
                let dest = model::Destination {
                    peer,
                    port,
                    proto: d.proto,
                };
                let (first, last) = (d.first_ns.max(opts.window.since_ns.unwrap_or(0)), d.last_ns);
                if opts.window.until_ns.is_some_and(|u| first > u) || last < first {
                    continue;
                }
                let tally = model::Tally {
                    count: d.count,
                    first_ns: first,
                    last_ns: last,
                };
                profiles.add(key.clone(), dest, d.ip, None, tally);
            }
        }
    }
    let mut documents = Vec::new();
    let mut unlabelled = Vec::new();
    let mut namespaces = BTreeSet::new();
    for (key, dests) in &profiles.workloads {
        if key.labels.is_empty() {
            unlabelled.push(key.namespace.clone());
            continue;
        }
        namespaces.insert(key.namespace.clone());
        documents.push(render::network_policy(key, dests, &opts.render));
        if opts.render.cilium {
            documents.push(render::cilium_policy(key, dests, &opts.render));
        }
    }
    if opts.render.default_deny {
        documents.extend(namespaces.iter().map(|ns| render::default_deny(ns)));
    }
    documents.sort_by(|a, b| {
        (
            &a.namespace,
            a.kind,
            a.name != render::DEFAULT_DENY_NAME,
            &a.name,
        )
            .cmp(&(
                &b.namespace,
                b.kind,
                b.name != render::DEFAULT_DENY_NAME,
                &b.name,
            ))
    });
    Ok(Advice {
        documents,
        stats,
        unlabelled,
        dropped: profiles.dropped,
    })
}

/// The documents as one YAML stream.
pub fn to_yaml<'a>(documents: impl IntoIterator<Item = &'a Document>) -> String {
    let mut out = String::new();
    for doc in documents {
        yaml::document(&mut out, &doc.comment, &doc.node);
    }
    out
}

/// `DIR/<namespace>.yaml` (NetworkPolicies) and `DIR/<namespace>.cilium.yaml`,
/// each written atomically; returns the files written.
pub fn write_dir(dir: &Path, documents: &[Document]) -> Result<Vec<PathBuf>, AdviseError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AdviseError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut files: std::collections::BTreeMap<PathBuf, Vec<&Document>> = Default::default();
    for doc in documents {
        let suffix = match doc.kind {
            Kind::NetworkPolicy => "yaml",
            Kind::CiliumNetworkPolicy => "cilium.yaml",
        };
        // Namespace names are DNS labels; anything else is made one.
        let ns = model::sanitize_name(&doc.namespace);
        files
            .entry(dir.join(format!("{ns}.{suffix}")))
            .or_default()
            .push(doc);
    }
    for (path, docs) in &files {
        crate::baseline::store::write_atomic(path, to_yaml(docs.iter().copied()).as_bytes())
            .map_err(io(path))?;
    }
    Ok(files.into_keys().collect())
}

/// The generated documents as values, for the diff.
pub fn as_values(documents: &[Document]) -> Vec<serde_json::Value> {
    documents
        .iter()
        .filter_map(|d| {
            let mut text = String::new();
            yaml::document(&mut text, &[], &d.node);
            serde_yaml_ng::from_str(&text).ok()
        })
        .collect()
}

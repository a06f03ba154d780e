//! The `kmirror` binary's commands, beside `main.rs` (which holds the flags, `main` and the
//! dispatch): `run.rs` (check and run), `checkpoints.rs` (show and reset), `terminal.rs`
//! (logging, stderr lines, signals). What they share is here: usage errors, loading the
//! routing file, `--route` checks. Everything else lives in the library.

pub(crate) mod checkpoints;
pub(crate) mod run;
pub(crate) mod terminal;

use std::path::Path;

use anyhow::Result;
use kmirror::config::Config;

/// A usage error found after parsing (an unknown route): exit 2 like clap's own.
#[derive(Debug)]
pub(crate) struct Usage(pub(crate) String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

pub(crate) fn load(path: &Path) -> Result<Config> {
    Ok(Config::load(path)?)
}

/// `--route R` must name a route of the file: a usage error (exit 2) otherwise.
/// `command` works on routes between clusters; a file whose routes all read dumps has
/// none, and saying so beats an empty plan.
pub(crate) fn cluster_routes_only(cfg: &Config, command: &str) -> Result<()> {
    if cfg.routes.is_empty() && !cfg.imports.is_empty() {
        return Err(Usage(format!(
            "every route of {} reads a [files] dump: `{command}` copies between clusters; replay the dumps with `kmirror import -c {}`",
            cfg.path.display(),
            cfg.path.display()
        ))
        .into());
    }
    Ok(())
}

pub(crate) fn check_route(cfg: &Config, route: &str) -> Result<()> {
    if cfg.route(route).is_none() {
        let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
        return Err(Usage(format!(
            "--route: route \"{route}\" is not in {} (its routes: {})",
            cfg.path.display(),
            names.join(", ")
        ))
        .into());
    }
    Ok(())
}

#!/usr/bin/env bash
# The project's test command: what CI runs (.ci/run) and what to run before pushing.
#   1. installs the tansu broker the integration tests run against (scripts/tansu.sh, from
#      PyPI into .tools/) and exports KMIRROR_TANSU; an already set KMIRROR_TANSU is kept;
#      and kcat (Debian's package) when it is missing, for tests/import.rs; moto_server (an
#      S3-compatible server, scripts/moto.sh, from PyPI into .tools/) for the s3:// archive
#      tests, exported as KMIRROR_MOTO;
#   2. cargo fmt --check, clippy with warnings as errors;
#   3. the deployment: hadolint on the Dockerfile, the Helm chart linted, rendered in its
#      variants and validated against the Kubernetes schemas (scripts/chart-check.sh, its
#      tools from PyPI and npm into .tools/);
#   4. the doc tests, then every test target; a closing line totals them.
# Stops at the first failing step and exits non-zero.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*"; }
SECONDS=0

step "tools"
cargo --version
rustc --version
cargo fmt --version >/dev/null 2>&1 || { echo "rustfmt is missing (rustup component add rustfmt)" >&2; exit 1; }
cargo clippy --version >/dev/null 2>&1 || { echo "clippy is missing (rustup component add clippy)" >&2; exit 1; }

if [[ -n "${KMIRROR_TANSU:-}" ]]; then
    step "tansu: using KMIRROR_TANSU=$KMIRROR_TANSU"
else
    step "tansu: scripts/tansu.sh"
    KMIRROR_TANSU="$(scripts/tansu.sh install)"
    export KMIRROR_TANSU
    echo "KMIRROR_TANSU=$KMIRROR_TANSU"
fi
"$KMIRROR_TANSU" --version

# tests/archive.rs dumps to and restores from s3:// archives on moto_server (PyPI).
if [[ -n "${KMIRROR_MOTO:-}" ]]; then
    step "moto: using KMIRROR_MOTO=$KMIRROR_MOTO"
else
    step "moto: scripts/moto.sh"
    KMIRROR_MOTO="$(scripts/moto.sh install)"
    export KMIRROR_MOTO
    echo "KMIRROR_MOTO=$KMIRROR_MOTO"
fi

# tests/import.rs replays a dump made by the real kcat (Debian's package).
if [[ -n "${KMIRROR_KCAT:-}" ]]; then
    step "kcat: using KMIRROR_KCAT=$KMIRROR_KCAT"
elif ! command -v kcat >/dev/null; then
    step "kcat: installing Debian's package"
    sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq && $sudo apt-get install -y -qq kcat >/dev/null
fi
"${KMIRROR_KCAT:-kcat}" -V 2>&1 | head -1 || true

step "cargo fmt --all -- --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "Dockerfile and Helm chart: scripts/chart-check.sh"
# The binary checks the routing files as the chart mounts them (built for the tests anyway).
cargo build --bin kmirror
KMIRROR_BIN=target/debug/kmirror scripts/chart-check.sh

# Test output is also kept in a log, to close with one line of totals over every test binary.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

step "cargo test --doc"
cargo test --doc 2>&1 | tee -a "$log"

step "cargo test --all-targets --no-fail-fast"
cargo test --all-targets --no-fail-fast 2>&1 | tee -a "$log"

step "all checks passed in ${SECONDS}s"
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i) ~ /^passed/) p += $(i-1); if ($(i) ~ /^failed/) f += $(i-1); if ($(i) ~ /^ignored/) s += $(i-1) } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"

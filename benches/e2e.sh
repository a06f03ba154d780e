#!/usr/bin/env bash
# End-to-end benchmark of kmirror against kcat and a confluent-kafka script, on librdkafka
# mock clusters (`kmirror dev-cluster`). Installs its peers if missing, builds kmirror in
# release mode, then runs benches/e2e.py, which prints Markdown tables (see BENCHMARKS.md)
# and keeps the raw figures in target/e2e-bench/results.json.
#
#   benches/e2e.sh                      # everything, 5 runs each (~10 min on 2 cores)
#   benches/e2e.sh --runs 1 --only 200B/8p --live-rates    # a quick smoke run
#   benches/e2e.sh --help               # every option
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kcat >/dev/null; then
    echo "installing kcat (Debian package)" >&2
    apt-get update -qq && apt-get install -y -qq kcat >/dev/null
fi
if ! python3 -c 'import confluent_kafka' 2>/dev/null; then
    echo "installing confluent-kafka (PyPI)" >&2
    python3 -m pip install -q confluent-kafka
fi
[ -x /usr/bin/time ] || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }

# KMIRROR_BIN=/path/to/kmirror benchmarks that build instead of this tree's.
[ -n "${KMIRROR_BIN:-}" ] || cargo build --release --bin kmirror
exec python3 benches/e2e.py "$@"

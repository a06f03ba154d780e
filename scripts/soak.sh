#!/usr/bin/env bash
# The long flow-through soak (issue 8; RELIABILITY.md, "Flow-through soak"): a release build
# of tests/soak.rs's `soak_flow_through_long_run`. A producer writes sequence-numbered
# records to 16 partitions of a mock cluster while the kmirror binary follows them to a
# second one through target outages, leader moves, source Fetch errors, two kill -9 and a
# SIGTERM; an independent checker proves every sequence number arrived (missing = 0) and
# prints duplicates, latency percentiles and the fault timeline.
#
# Usage:
#   scripts/soak.sh [--records N] [--rate RECORDS_PER_SEC] [--log FILE]
#     --records  records to produce (default 5000000)
#     --rate     producer ceiling; the 30,000-record window per partition may hold it lower
#                (default 25000)
#     --log      also write the output to FILE
# Exits non-zero if anything was missing or an assertion failed. The CI version (1M records,
# debug build) runs in `cargo test`: soak_flow_through_1m_records_under_faults_loses_nothing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

records=5000000
rate=25000
log=/dev/null
while [[ $# -gt 0 ]]; do
    case "$1" in
        --records) records="$2"; shift 2 ;;
        --rate) rate="$2"; shift 2 ;;
        --log) log="$2"; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

echo "soak: $records records, rate ceiling $rate/s; commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown); $(nproc) cores; $(date -u +%FT%TZ)" | tee "$log"
KMIRROR_SOAK_RECORDS="$records" KMIRROR_SOAK_RATE="$rate" \
    cargo test --release --test soak soak_flow_through_long_run -- --ignored --nocapture --exact 2>&1 \
    | grep --line-buffered -v -e ' librdkafka: ' -e 'rdkafka::client' | tee -a "$log"

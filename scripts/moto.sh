#!/usr/bin/env bash
# moto_server: an S3-compatible server on loopback (PyPI `moto[server]`), for the tests of
# `s3://` archives (tests/archive.rs). Nothing here talks to AWS.
#
# Usage:
#   scripts/moto.sh [install]   install if needed (idempotent), print moto_server's path
#   scripts/moto.sh path        print the path, or fail if not installed
#
# Installs into a virtual environment under .tools/moto/ (gitignored), staged and renamed
# into place so an interrupted install never leaves half of one where the tests look. The
# tests start one server per test on a free port (tests/common/s3.rs).
set -euo pipefail

VERSION="${KMIRROR_MOTO_VERSION:-5.2.5}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PREFIX="$ROOT/.tools/moto/moto-$VERSION"
BIN="$PREFIX/bin/moto_server"

log() { echo "moto.sh: $*" >&2; }
works() { [[ -x "$1" ]] && "$1" --help >/dev/null 2>&1; }

install() {
    if works "$BIN"; then
        echo "$BIN"
        return
    fi
    command -v python3 >/dev/null || { log "error: python3 is needed (pip install moto[server])"; exit 1; }
    mkdir -p "$ROOT/.tools/moto"
    STAGING="$(mktemp -d "$ROOT/.tools/moto/.staging.XXXXXX")"
    trap 'rm -rf "$STAGING"' EXIT
    log "installing moto[server]==$VERSION into $PREFIX"
    rm -rf "$PREFIX"
    python3 -m venv "$STAGING/venv"
    "$STAGING/venv/bin/pip" install -q --disable-pip-version-check "moto[server]==$VERSION" >&2
    mv "$STAGING/venv" "$PREFIX"
    # The venv's scripts were written with the staging path in their #! lines.
    sed -i "1s|^#!.*python.*|#!$PREFIX/bin/python3|" "$PREFIX"/bin/moto_server
    works "$BIN" || { log "error: $BIN does not run after the install"; exit 1; }
    echo "$BIN"
}

case "${1:-install}" in
    install) install ;;
    path) works "$BIN" && echo "$BIN" || { log "not installed: run scripts/moto.sh install"; exit 1; } ;;
    *) log "usage: scripts/moto.sh [install|path]"; exit 2 ;;
esac

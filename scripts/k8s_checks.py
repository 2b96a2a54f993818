"""Checks of rendered Kubernetes YAML that schema validation cannot make.

Usage (the Python needs PyYAML; scripts/k8s-tools.sh provides one):
  python3 k8s_checks.py objects FILE           the conventions of docs/kubernetes.md
  python3 k8s_checks.py same-rules RULE_FILE PROMETHEUSRULE_FILE
  python3 k8s_checks.py rules-spec PROMETHEUSRULE_FILE   prints its spec as a rule file
  python3 k8s_checks.py mutate-alert RULE_FILE NAME OUT  OUT = RULE_FILE with NAME never firing
  python3 k8s_checks.py dashboard-rules DASHBOARD_JSON   its queries as a rule file
Exits 1 with one line per problem.
"""

import json
import re
import sys

import yaml

# The hardening every leasehold container (and the stand-in database) has.
HARDENED = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
}


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def pod_spec(obj):
    if obj["kind"] in ("StatefulSet", "Deployment", "DaemonSet"):
        return obj["spec"]["template"]["spec"]
    if obj["kind"] == "Pod":
        return obj["spec"]
    return None


def check_objects(path):
    problems = []
    docs = load_all(path)
    say = lambda obj, msg: problems.append(f"{obj['kind']}/{obj['metadata']['name']}: {msg}")
    leasehold_seen = 0
    for obj in docs:
        selector = (obj.get("spec") or {}).get("selector") or {}
        labels = selector.get("matchLabels", selector) if isinstance(selector, dict) else {}
        if isinstance(labels, dict) and any(k == "helm.sh/chart" for k in labels):
            say(obj, "helm.sh/chart in a selector (selectors are immutable)")
        if obj["kind"] == "Service" and obj["spec"].get("clusterIP") == "None":
            if obj["spec"].get("publishNotReadyAddresses") is not True:
                say(obj, "headless Service without publishNotReadyAddresses: true")
        if obj["kind"] == "PodDisruptionBudget" and obj["spec"].get("maxUnavailable") != 1:
            say(obj, "PodDisruptionBudget is not maxUnavailable: 1")
        spec = pod_spec(obj)
        if spec is None:
            continue
        if obj["kind"] == "StatefulSet" and obj["spec"].get("podManagementPolicy") != "Parallel":
            say(obj, "StatefulSet is not podManagementPolicy: Parallel")
        if obj["kind"] == "StatefulSet" and obj["spec"].get("minReadySeconds", 0) < 1:
            say(obj, "StatefulSet without minReadySeconds: a rolling update would not wait out a lease")
        containers = [("init", c) for c in spec.get("initContainers") or []]
        containers += [("main", c) for c in spec.get("containers") or []]
        for where, c in containers:
            for p in c.get("ports") or []:
                if "name" in p and len(p["name"]) > 15:
                    say(obj, f"port name {p['name']} is longer than 15 characters")
            is_test = (obj["metadata"].get("annotations") or {}).get("helm.sh/hook") == "test"
            if c["name"] != "leasehold" and "leasehold" not in c.get("image", "") and not is_test:
                continue  # a database container of someone else's: not ours to harden
            sc = c.get("securityContext") or {}
            for k, v in HARDENED.items():
                if sc.get(k) != v:
                    say(obj, f"container {c['name']}: securityContext.{k} is not {v}")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                say(obj, f"container {c['name']}: capabilities are not all dropped")
            if (sc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
                say(obj, f"container {c['name']}: seccompProfile is not RuntimeDefault")
            res = c.get("resources") or {}
            if not res.get("requests") or not (res.get("limits") or {}).get("memory"):
                say(obj, f"container {c['name']}: no resource requests or memory limit")
            if c["name"] != "leasehold":
                continue
            leasehold_seen += 1
            native = c.get("restartPolicy") == "Always"
            if where == "init" and not native:
                say(obj, "leasehold in initContainers without restartPolicy: Always")
            if where == "main" and "restartPolicy" in c:
                say(obj, "classic leasehold container with a restartPolicy")
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                get = ((c.get(probe) or {}).get("httpGet")) or {}
                if not get:
                    say(obj, f"leasehold has no {probe}")
                    continue
                if get.get("port") != "lh-metrics":
                    say(obj, f"leasehold {probe} is not on the metrics port (kubelet cannot reach localhost)")
                if probe != "readinessProbe" and get.get("path") != "/healthz":
                    say(obj, f"leasehold {probe} is not /healthz: it must not wait for a quorum")
            mounts = [m["mountPath"] for m in c.get("volumeMounts") or []]
            args = " ".join(c.get("args") or [])
            data_dir = re.search(r"--data-dir=(\S+)", args)
            if data_dir and data_dir.group(1) not in mounts:
                say(obj, f"the data dir {data_dir.group(1)} is not on a volume")
        if obj["kind"] == "StatefulSet" and any(c["name"] == "leasehold" for _, c in containers):
            for _, c in containers:
                if c["name"] == "leasehold":
                    continue
                if not ((c.get("lifecycle") or {}).get("preStop")):
                    say(obj, f"container {c['name']} has no preStop hand-over")
            grace = spec.get("terminationGracePeriodSeconds", 30)
            if grace < 30:
                say(obj, f"terminationGracePeriodSeconds {grace} leaves no room for a hand-over")
    if leasehold_seen == 0 and any(pod_spec(o) for o in docs if o["kind"] == "StatefulSet"):
        problems.append("no leasehold container in any StatefulSet")
    return problems


def rules_of(path):
    docs = load_all(path)
    if len(docs) == 1 and "groups" in docs[0]:
        return docs[0]
    [rule] = [d for d in docs if d["kind"] == "PrometheusRule"]
    return rule["spec"]


def same_rules(plain, rendered):
    a, b = rules_of(plain), rules_of(rendered)
    if a != b:
        return [f"{rendered}: the PrometheusRule differs from {plain}"]
    return []


def mutate_alert(path, name, out):
    spec = rules_of(path)
    found = False
    for g in spec["groups"]:
        for r in g["rules"]:
            if r.get("alert") == name:
                r["expr"] = "vector(1) == 0"
                found = True
    if not found:
        return [f"{path}: no alert {name}"]
    with open(out, "w") as f:
        yaml.safe_dump(spec, f)
    return []


def dashboard_rules(path):
    with open(path) as f:
        d = json.load(f)
    problems = []
    names = {v["name"] for v in d["templating"]["list"]}
    if not {"datasource", "namespace", "cluster"} <= names:
        problems.append(f"{path}: template variables are {sorted(names)}")
    rules = []
    for p in d["panels"]:
        if p["datasource"]["uid"] != "${datasource}":
            problems.append(f"{path}: panel {p['title']} does not use ${{datasource}}")
        for t in p["targets"]:
            expr = (
                t["expr"]
                .replace("$namespace", "db")
                .replace("$cluster", "pg")
                .replace("$__rate_interval", "1m")
            )
            rules.append({"record": f"dashboard:panel{p['id']}:{t['refId']}", "expr": expr})
    yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sys.stdout)
    return problems


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "objects":
        problems = check_objects(argv[2])
    elif cmd == "same-rules":
        problems = same_rules(argv[2], argv[3])
    elif cmd == "rules-spec":
        yaml.safe_dump(rules_of(argv[2]), sys.stdout)
        problems = []
    elif cmd == "mutate-alert":
        problems = mutate_alert(argv[2], argv[3], argv[4])
    elif cmd == "dashboard-rules":
        problems = dashboard_rules(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(f"k8s_checks: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The deployment files agree with the bot: ``deploy/kubernetes/`` is valid against the Kubernetes
API schemas (offline: the copies bundled in kubernetes-validate), and cross-checks catch what a
schema cannot — probes on a port the ops listener does not use, a grace period shorter than the
drain, a variable the bot does not read, a Secret key the example does not provide, a budget or
autoscaler that selects nothing, more Socket Mode connections than Slack allows, an ops port
behind a Service; and the compose file's cluster profile points the bot at its cluster nodes.

Kustomize is not run here: ``_render`` applies the overlays' patches itself (a strategic merge on
the lists these manifests patch), so the HTTP overlay is checked as what it deploys. Every checker
returns the problems it finds; ``test_each_check_catches_its_mistake`` breaks a copy of the
manifests once per checker, so none of them can pass by finding nothing to look at.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from bot.config import Settings, load_settings
from bot.errors import ConfigError
from bot.store.client import redis_url_problem

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
EXAMPLE_SECRET = KUBE / "secret.example.yaml"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
OVERLAYS = {"base": KUBE, "http": KUBE / "http", "example-redis": KUBE / "example-redis"}

# The oldest Kubernetes the manifests claim (README.md, "Deploy") and the newest bundled schema.
SCHEMA_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# After SHUTDOWN_GRACE the bot still ends the answers left as "interrupted" and closes its clients.
DRAIN_MARGIN_S = 15
# Slack holds at most this many Socket Mode connections of one app; more get too_many_websockets.
SLACK_SOCKET_LIMIT = 10
# Settings being added alongside these manifests (issue 14, item 5: worker processes).
LANDING_SETTINGS = {"WORKERS"}
# Strategic merge keys of the lists the overlays patch (Kubernetes' patchMergeKey).
MERGE_KEYS = {
    "containers": "name",
    "env": "name",
    "ports": "containerPort",
    "volumes": "name",
    "volumeMounts": "mountPath",
}

Doc = dict[str, Any]


# --- reading the manifests -------------------------------------------------------------------


def _load(path: Path) -> list[Doc]:
    return copy.deepcopy(_parsed(path))


@functools.cache
def _parsed(path: Path) -> list[Doc]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's, where PyYAML has it
    return [doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc]


def _kustomization(folder: Path) -> Doc:
    (doc,) = _load(folder / "kustomization.yaml")
    return doc


def _merge(base: Any, patch: Any, field: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        merged = dict(base)
        for key, value in patch.items():
            merged[key] = _merge(base[key], value, key) if key in base else value
        return merged
    if isinstance(base, list) and isinstance(patch, list) and field in MERGE_KEYS:
        key = MERGE_KEYS[field]
        merged_list = list(base)
        for item in patch:
            at = [i for i, old in enumerate(merged_list) if old.get(key) == item.get(key)]
            if at:
                merged_list[at[0]] = _merge(merged_list[at[0]], item)
            else:
                merged_list.append(item)
        return merged_list
    return patch


def _render(folder: Path) -> list[Doc]:
    """What ``kubectl apply -k folder`` would send, as far as these manifests need kustomize."""
    kustomization = _kustomization(folder)
    docs: list[Doc] = []
    for entry in kustomization["resources"]:
        path = (folder / entry).resolve()
        docs += _render(path) if path.is_dir() else _load(path)
    for patch_entry in kustomization.get("patches", []):
        (patch,) = _load(folder / patch_entry["path"])
        targets = [i for i, doc in enumerate(docs) if _id(doc) == _id(patch)]
        assert targets, f"{folder.name}: {patch_entry['path']} patches nothing ({_id(patch)})"
        docs[targets[0]] = _merge(docs[targets[0]], patch)
    return docs


def _id(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _one(docs: list[Doc], kind: str) -> Doc:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _bot(docs: list[Doc]) -> Doc:
    return _one(docs, "Deployment")


def _pod(docs: list[Doc]) -> Doc:
    spec: Doc = _bot(docs)["spec"]["template"]["spec"]
    return spec


def _container(docs: list[Doc]) -> Doc:
    (container,) = _pod(docs)["containers"]
    return container


def _image_env() -> dict[str, str]:
    """The runtime stage's ``ENV`` of the Dockerfile (the image's defaults for the pod)."""
    runtime = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[1]
    pairs = re.findall(r"^ENV (.+)$", runtime, re.MULTILINE)
    return dict(pair.split("=", 1) for line in pairs for pair in line.split())


def _effective_env(docs: list[Doc]) -> dict[str, str]:
    """The bot's variables in the pod: image ENV < ConfigMaps (envFrom) < env (plain values)."""
    env = _image_env()
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for source in _container(docs).get("envFrom", []):
        if "configMapRef" in source:
            env |= configmaps[source["configMapRef"]["name"]].get("data", {})
    env |= {e["name"]: e["value"] for e in _container(docs).get("env", []) if "value" in e}
    return env


def _setting(env: dict[str, str], name: str) -> str:
    return env.get(name, str(Settings.model_fields[name.lower()].default))


def _container_port(container: Doc, port: int | str) -> int | None:
    if isinstance(port, int):
        return port
    named = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    return named[0] if named else None


def _quantity(text: str | int) -> float:
    units = {"m": 1e-3, "": 1, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(text))
    assert match, f"not a quantity: {text!r}"
    return float(match[1]) * units[match[2]]


def _example_secret() -> Doc:
    (secret,) = _load(EXAMPLE_SECRET)
    return secret


def _pod_templates(docs: list[Doc]) -> list[Doc]:
    return [d["spec"]["template"] for d in docs if d["kind"] in {"Deployment", "StatefulSet"}]


# --- the checks --------------------------------------------------------------------------------


def schema_problems(docs: list[Doc]) -> list[str]:
    problems = []
    for doc in docs:
        for version in SCHEMA_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(map(str, exc.path))
                problems.append(f"{_id(doc)} on {version}: {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{_id(doc)}: {exc.message}")
    return problems


def probe_problems(docs: list[Doc]) -> list[str]:
    env, container = _effective_env(docs), _container(docs)
    ops_port = int(_setting(env, "OPS_PORT"))
    problems = []
    if _setting(env, "OPS_HOST") not in {"0.0.0.0", "::"}:
        problems.append(f"OPS_HOST={_setting(env, 'OPS_HOST')}: the kubelet cannot reach it")
    wanted = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in wanted.items():
        get = container.get(probe, {}).get("httpGet")
        if probe != "startupProbe" and get is None:
            problems.append(f"no {probe}")
        if get is None:
            continue
        if get["path"] != path:
            problems.append(f"{probe} asks {get['path']}, not {path}")
        if _container_port(container, get["port"]) != ops_port:
            problems.append(f"{probe} on port {get['port']!r}, OPS_PORT is {ops_port}")
    return problems


def grace_problems(docs: list[Doc]) -> list[str]:
    env, pod = _effective_env(docs), _pod(docs)
    needed = float(_setting(env, "SHUTDOWN_GRACE")) + DRAIN_MARGIN_S
    pre_stop = _container(docs).get("lifecycle", {}).get("preStop", {})
    if pre_stop.get("exec", {}).get("command", [""])[0] == "sleep":
        needed += float(pre_stop["exec"]["command"][1])
    grace = pod.get("terminationGracePeriodSeconds", 30)
    return [] if grace >= needed else [f"terminationGracePeriodSeconds {grace} < {needed:g}"]


def setting_problems(docs: list[Doc]) -> list[str]:
    known = {name.upper() for name in Settings.model_fields} | LANDING_SETTINGS
    names = {e["name"] for e in _container(docs).get("env", [])}
    names |= {k for d in docs if d["kind"] == "ConfigMap" for k in d.get("data", {})}
    problems = [f"{name} is not a setting of the bot" for name in sorted(names - known)]
    secret = _example_secret()["stringData"]
    values = _effective_env(docs) | {
        e["name"]: secret[e["valueFrom"]["secretKeyRef"]["key"]]
        for e in _container(docs).get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    url = values.get("REDIS_URL", "")
    if url.partition("://")[0] in {"redis", "rediss"}:
        try:  # a second host in a one-server URL: the bot would fail when it connects
            urlsplit(url).port  # noqa: B018
        except ValueError:
            problems.append(f"REDIS_URL names several hosts without +cluster: {url}")
    # The values as the bot reads them: a malformed REDIS_URL or port stops it at start-up.
    overrides = {k.lower(): v for k, v in values.items() if k.lower() in Settings.model_fields}
    try:
        load_settings(overrides, env_file=None)
    except ConfigError as exc:
        problems += exc.problems
    return problems


def secret_problems(docs: list[Doc]) -> list[str]:
    secret = _example_secret()
    problems = []
    for entry in _container(docs).get("env", []):
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref and ref["name"] != secret["metadata"]["name"]:
            problems.append(f"{entry['name']} reads Secret {ref['name']!r}")
        if ref and ref["key"] not in secret["stringData"]:
            problems.append(f"{entry['name']} reads key {ref['key']!r}, not in the example")
    configmaps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for source in _container(docs).get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] not in configmaps:
            problems.append(f"envFrom names ConfigMap {source['configMapRef']['name']!r}")
    return problems


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


def selector_problems(docs: list[Doc]) -> list[str]:
    bot = _bot(docs)
    labels = bot["spec"]["template"]["metadata"]["labels"]
    pdb, hpa = _one(docs, "PodDisruptionBudget"), _one(docs, "HorizontalPodAutoscaler")
    problems = []
    if not _selects(bot["spec"]["selector"]["matchLabels"], labels):
        problems.append("the Deployment's selector does not select its own pods")
    if not _selects(pdb["spec"]["selector"].get("matchLabels", {}), labels):
        problems.append("the PodDisruptionBudget selects no pod of the Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    if (target["apiVersion"], target["kind"], target["name"]) != (
        bot["apiVersion"],
        bot["kind"],
        bot["metadata"]["name"],
    ):
        problems.append(f"the HorizontalPodAutoscaler scales {target}, not the Deployment")
    if pdb["spec"].get("minAvailable", 0) >= hpa["spec"].get("minReplicas", 1):
        problems.append("minAvailable ≥ minReplicas: no pod could ever be evicted (drains hang)")
    for service in (d for d in docs if d["kind"] == "Service"):
        templates = _pod_templates(docs)
        if not any(
            _selects(service["spec"]["selector"], t["metadata"]["labels"]) for t in templates
        ):
            problems.append(f"Service {service['metadata']['name']} selects no pod")
    return problems


def capacity_problems(docs: list[Doc]) -> list[str]:
    env, container = _effective_env(docs), _container(docs)
    problems = []
    workers = env.get("WORKERS", "1")
    if not workers.isdigit():
        return [f"WORKERS={workers}: in a container `auto` sees the node's cores; set a number"]
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    if int(workers) > _quantity(limits["cpu"]):
        problems.append(f"WORKERS={workers} processes share a {limits['cpu']} CPU limit")
    for resource, request in requests.items():
        if resource in limits and _quantity(request) > _quantity(limits[resource]):
            problems.append(f"{resource}: request {request} above limit {limits[resource]}")
    if _setting(env, "SLACK_MODE") == "socket":
        hpa, bot = _one(docs, "HorizontalPodAutoscaler"), _bot(docs)
        surge = bot["spec"].get("strategy", {}).get("rollingUpdate", {}).get("maxSurge", 1)
        pods = max(hpa["spec"]["maxReplicas"], bot["spec"].get("replicas", 1)) + int(surge)
        if pods * int(workers) > SLACK_SOCKET_LIMIT:
            problems.append(
                f"{pods} pods (maxReplicas + maxSurge) × WORKERS={workers} Socket Mode "
                f"connections > Slack's {SLACK_SOCKET_LIMIT}"
            )
    return problems


def _pod_hardening_problems(docs: list[Doc]) -> list[str]:
    problems = []
    for template in _pod_templates(docs):
        pod, who = template["spec"], template["metadata"]["labels"]["app.kubernetes.io/name"]
        context = pod.get("securityContext", {})
        if context.get("runAsNonRoot") is not True or not context.get("runAsUser"):
            problems.append(f"{who}: not forced to a non-root user")
        if context.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            problems.append(f"{who}: no RuntimeDefault seccomp profile")
        for container in pod["containers"]:
            own = container.get("securityContext", {})
            if own.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{who}: privilege escalation allowed")
            if own.get("capabilities", {}).get("drop") != ["ALL"]:
                problems.append(f"{who}: capabilities not all dropped")
            if own.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{who}: root filesystem writable")
    return problems


def hardening_problems(docs: list[Doc]) -> list[str]:
    problems = _pod_hardening_problems(docs)
    uid = re.search(r"useradd .*--uid (\d+)", DOCKERFILE.read_text())
    assert uid, "the Dockerfile's user"
    if _pod(docs)["securityContext"].get("runAsUser") != int(uid.group(1)):
        problems.append(f"the bot does not run as the image's user {uid.group(1)}")
    # Without REDIS_URL the embedded store writes under DATA_DIR: only a volume there allows it.
    env, mounts = _effective_env(docs), _container(docs).get("volumeMounts", [])
    if not env.get("REDIS_URL") and _setting(env, "DATA_DIR") not in {
        m["mountPath"] for m in mounts
    }:
        problems.append("no REDIS_URL and no volume at DATA_DIR: the embedded store cannot write")
    return problems


def exposure_problems(docs: list[Doc]) -> list[str]:
    env, container = _effective_env(docs), _container(docs)
    ops_port, http_port = int(_setting(env, "OPS_PORT")), int(_setting(env, "HTTP_PORT"))
    labels = _bot(docs)["spec"]["template"]["metadata"]["labels"]
    reached = [
        (
            service["metadata"]["name"],
            _container_port(container, port.get("targetPort", port["port"])),
        )
        for service in docs
        if service["kind"] == "Service" and _selects(service["spec"]["selector"], labels)
        for port in service["spec"]["ports"]
    ]
    problems = [
        f"Service {name} exposes the ops port" for name, port in reached if port == ops_port
    ]
    if _setting(env, "SLACK_MODE") == "http" and http_port not in [port for _, port in reached]:
        problems.append(f"HTTP mode and no Service reaches HTTP_PORT {http_port}")
    return problems


BOT_CHECKS = [
    schema_problems,
    probe_problems,
    grace_problems,
    setting_problems,
    secret_problems,
    selector_problems,
    capacity_problems,
    hardening_problems,
    exposure_problems,
]


@pytest.fixture(scope="module", params=["base", "http"])
def bot_docs(request: pytest.FixtureRequest) -> list[Doc]:
    return _render(OVERLAYS[request.param])


@pytest.mark.parametrize("check", BOT_CHECKS, ids=lambda check: check.__name__)
def test_the_bot_manifests_pass(
    check: Callable[[list[Doc]], list[str]], bot_docs: list[Doc]
) -> None:
    assert check(bot_docs) == []


def test_the_example_redis_is_valid_hardened_and_never_evicts() -> None:
    docs = _render(OVERLAYS["example-redis"])
    assert schema_problems(docs) == []
    (template,) = _pod_templates(docs)
    (redis,) = template["spec"]["containers"]
    args = " ".join(redis.get("command", []) + redis.get("args", []))
    assert "--appendonly yes" in args and "--maxmemory-policy noeviction" in args
    service = _one(docs, "Service")
    assert _selects(service["spec"]["selector"], template["metadata"]["labels"])
    (port,) = service["spec"]["ports"]
    assert _container_port(redis, port["targetPort"]) == port["port"] == 6379
    # What the ConfigMap's comment and the kustomization tell people to set.
    assert f"redis://{service['metadata']['name']}:6379/0" in (KUBE / "configmap.yaml").read_text()
    assert _pod_hardening_problems(docs) == []


def test_every_manifest_is_listed_and_the_example_secret_is_not() -> None:
    # A manifest left out of its kustomization is silently not deployed; the example Secret's
    # placeholders must never be.
    for folder in OVERLAYS.values():
        listed = {(folder / entry).resolve() for entry in _kustomization(folder)["resources"]}
        listed |= {
            (folder / p["path"]).resolve() for p in _kustomization(folder).get("patches", [])
        }
        present = {p.resolve() for p in folder.glob("*.yaml")} - {
            (folder / "kustomization.yaml").resolve(),
            EXAMPLE_SECRET.resolve(),
        }
        assert present - listed == set(), folder
        assert all(p.exists() for p in listed), folder
    assert all(d["kind"] != "Secret" for d in _render(KUBE))
    assert all(v.startswith("REPLACE-ME") for v in _example_secret()["stringData"].values())
    assert schema_problems([_example_secret()]) == []


def test_the_image_rewrite_names_the_deployments_image() -> None:
    # kustomize's `images:` matches by name: a mismatch leaves the placeholder image deployed.
    (image,) = _kustomization(KUBE)["images"]
    assert _container(_render(KUBE))["image"].split(":")[0] == image["name"]


# --- every check can fail ----------------------------------------------------------------------


def _set_env(docs: list[Doc], name: str, value: str) -> None:
    (entry,) = [e for e in _container(docs)["env"] if e["name"] == name]
    entry["value"] = value


def _secret_key(docs: list[Doc], key: str) -> None:
    entry = next(e for e in _container(docs)["env"] if "valueFrom" in e)
    entry["valueFrom"]["secretKeyRef"]["key"] = key


MISTAKES: list[tuple[str, Callable[[list[Doc]], list[str]], Callable[[list[Doc]], object]]] = [
    ("a misspelt field", schema_problems, lambda d: _pod(d).update(terminationGracePeriod=45)),
    ("probes on another port", probe_problems, lambda d: _set_env(d, "OPS_PORT", "9091")),
    ("ops listener on loopback", probe_problems, lambda d: _set_env(d, "OPS_HOST", "127.0.0.1")),
    ("a short grace", grace_problems, lambda d: _set_env(d, "SHUTDOWN_GRACE", "40")),
    ("a malformed port", setting_problems, lambda d: _set_env(d, "OPS_PORT", "x")),
    (
        "a misspelt variable",
        setting_problems,
        lambda d: _container(d)["env"].append({"name": "OPS_PROT", "value": "9090"}),
    ),
    (
        "several hosts in a one-server REDIS_URL",
        setting_problems,
        lambda d: _one(d, "ConfigMap")["data"].update(REDIS_URL="redis://r-0:6379,r-1:6379"),
    ),
    (
        "a REDIS_URL the bot refuses",
        setting_problems,
        lambda d: _one(d, "ConfigMap")["data"].update(REDIS_URL="redis+cluster://"),
    ),
    ("a Secret key nobody provides", secret_problems, lambda d: _secret_key(d, "OPENAI_KEY")),
    (
        "a PDB that selects nothing",
        selector_problems,
        lambda d: _one(d, "PodDisruptionBudget")["spec"]["selector"].update(
            matchLabels={"app.kubernetes.io/name": "slack-bot"}
        ),
    ),
    (
        "an HPA on another Deployment",
        selector_problems,
        lambda d: _one(d, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(name="bot"),
    ),
    (
        "more connections than Slack allows",
        capacity_problems,
        lambda d: _one(d, "HorizontalPodAutoscaler")["spec"].update(maxReplicas=5),
    ),
    ("WORKERS=auto", capacity_problems, lambda d: _set_env(d, "WORKERS", "auto")),
    ("root", hardening_problems, lambda d: _pod(d)["securityContext"].update(runAsUser=0)),
    (
        "no REDIS_URL on a read-only root",
        hardening_problems,
        lambda d: _one(d, "ConfigMap")["data"].pop("REDIS_URL"),
    ),
    (
        "the ops port behind a Service",
        exposure_problems,
        lambda d: d.append(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "metrics"},
                "spec": {
                    "selector": _bot(d)["spec"]["selector"]["matchLabels"],
                    "ports": [{"port": 80, "targetPort": "ops"}],
                },
            }
        ),
    ),
]


@pytest.mark.parametrize(
    ("check", "mistake"), [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES]
)
def test_each_check_catches_its_mistake(
    check: Callable[[list[Doc]], list[str]], mistake: Callable[[list[Doc]], object]
) -> None:
    docs = copy.deepcopy(_render(KUBE))
    mistake(docs)
    assert check(docs) != []


def test_every_check_is_exercised_by_a_mistake() -> None:
    assert {m[1] for m in MISTAKES} == set(BOT_CHECKS)


# --- docker-compose.yml ------------------------------------------------------------------------


def _compose() -> Doc:
    (doc,) = _load(COMPOSE)
    return doc


def _words(service: Doc) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [w for c in command for w in c.split()]


def compose_problems(compose: Doc) -> list[str]:
    services: dict[str, Doc] = compose["services"]
    problems = []
    default = sorted(name for name, s in services.items() if not s.get("profiles"))
    if default != ["bot", "redis"]:
        problems.append(f"the default profile runs {default}, not the bot and its Redis")
    cluster = {name: s for name, s in services.items() if "cluster" in s.get("profiles", [])}
    nodes = sorted(
        name
        for name, s in cluster.items()
        if "redis-server" in _words(s) and "--cluster-enabled yes" in " ".join(_words(s))
    )
    if len(nodes) != 3:
        problems.append(f"the cluster profile has {nodes} as cluster nodes, not three")
    for name in nodes:
        if "--maxmemory-policy noeviction" not in " ".join(_words(cluster[name])):
            problems.append(f"{name} may evict keys")
    creates = [
        (name, s)
        for name, s in cluster.items()
        if "--cluster create" in " ".join(_words(s)) and "--cluster-yes" in _words(s)
    ]
    if len(creates) != 1:
        return [*problems, "no one-shot `redis-cli --cluster create … --cluster-yes` service"]
    init, init_service = creates[0]
    words = _words(init_service)
    created = words[words.index("create") + 1 : words.index("--cluster-replicas")]
    if sorted(created) != [f"{n}:6379" for n in nodes]:
        problems.append(f"--cluster create joins {created}, not the nodes {nodes}")
    if set(init_service.get("depends_on", {})) != set(nodes):
        problems.append(f"{init} does not wait for every node")
    bots = [name for name, s in cluster.items() if "REDIS_URL" in s.get("environment", {})]
    if len(bots) != 1:
        return [*problems, f"the cluster profile has bots {bots}, not one"]
    bot = cluster[bots[0]]
    url = bot["environment"]["REDIS_URL"]
    hosts = sorted(urlsplit(url).netloc.rpartition("@")[2].split(","))
    if urlsplit(url).scheme != "redis+cluster" or hosts != [f"{n}:6379" for n in nodes]:
        problems.append(f"the cluster bot's REDIS_URL {url} does not name the nodes {nodes}")
    if problem := redis_url_problem(url):
        problems.append(problem)
    if bot.get("depends_on", {}).get(init, {}).get("condition") != "service_completed_successfully":
        problems.append(f"the cluster bot does not wait for {init} to finish")
    for name in ("bot", bots[0]):
        grace = int(str(services[name].get("stop_grace_period", "10s")).removesuffix("s"))
        if grace < float(_setting({}, "SHUTDOWN_GRACE")) + DRAIN_MARGIN_S:
            problems.append(f"{name}: stop_grace_period {grace}s is too short for the drain")
    return problems


def test_compose_keeps_its_default_and_gains_a_cluster_profile() -> None:
    assert compose_problems(_compose()) == []


@pytest.mark.parametrize(
    "mistake",
    [
        lambda c: c["services"]["bot-cluster"]["environment"].update(
            REDIS_URL="redis+cluster://redis-1:6379,redis-2:6379"
        ),
        lambda c: c["services"]["bot-cluster"]["environment"].update(
            REDIS_URL="redis://redis-1:6379,redis-2:6379,redis-3:6379"
        ),
        lambda c: c["services"].update({"redis-3": {"profiles": ["cluster"], "image": "redis"}}),
        lambda c: c["services"]["redis-cluster-init"].update(
            command="redis-cli --cluster create redis-1:6379 redis-2:6379 --cluster-replicas 0 --cluster-yes"
        ),
        lambda c: c["services"]["bot-cluster"].pop("profiles"),
        lambda c: c["services"]["bot-cluster"].update(depends_on={}),
    ],
    ids=[
        "two-seeds",
        "plain-url",
        "node-not-clustered",
        "create-misses-a-node",
        "no-profile",
        "no-wait",
    ],
)
def test_compose_mistakes_are_caught(mistake: Callable[[Doc], object]) -> None:
    compose = copy.deepcopy(_compose())
    mistake(compose)
    assert compose_problems(compose) != []

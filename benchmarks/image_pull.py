"""Cold image pull through the registry mirror vs the same client straight from the registry.

Targets (container-images issue, then the CPU-per-byte issue):

* a cold pull of a ~200 MiB image through the mirror by one client takes at
  most 1.1x the same client's direct pull (median of ``--runs``; 1.2x before);
* N = 3 concurrent pulls through three daemons: the registry serves
  1.00x the image's blob bytes.

The client is skopeo (``copy docker://... dir:...``, layers one at a time) or,
with ``--client containerd``, ``ctr images pull`` against a fresh containerd
(layers side by side, unpacked); the three concurrent pulls are skopeo's. The
registry is Debian's ``docker-registry`` on loopback, the swarm daemons as processes (a fresh swarm,
so a cold cache, for every mirrored run). Direct and mirrored pulls alternate;
every timed step starts after ``sync``. Memory is made resident first
(``--memory``, :mod:`damselfly.testbed.machine`). Two topologies, both on this machine's
two cores:

* ``up``: scheduler + seed peer + the client's daemon, as ``damselfly up`` runs
  them: the seed fetches each blob from the registry and hands it to the
  client's daemon, so two daemons' data paths share the cores with the client;
* ``node``: scheduler + the client's daemon and no seed peer: the daemon fetches
  from the registry itself (what Dragonfly does when no seed peer is deployed).
  On the client's node this is the same work as receiving the blob from a seed
  on another host; the ``up`` topology adds that remote host's work to it.

Beside them, alternating too, a floor: ``pass``, the client's daemon with a proxy rule
sending blobs ``direct`` (forwarded as they come, nothing stored, hashed or shared), what
putting any proxy of this kind in the client's path costs on this machine
(``ratio_pass``; no target, and its pulls leave no blob in the store by design).

    .venv/bin/python benchmarks/image_pull.py --size 200MiB --layers 5 --runs 3 [--client containerd]

Prints JSON; exits 1 if a pull failed (a missed target is a number, not a crash).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.containerd import Containerd, hosts_dir
from tests.e2e.harness import Swarm, assert_dir_image, registries_conf

from damselfly.config import SchedulingConfig
from damselfly.testbed.machine import MEMORY_HELP, MODES, process_cpu_s, resident_memory
from damselfly.testbed.registry import build_image, start_registry
from damselfly.units import parse_size


def settle() -> None:
    os.sync()
    time.sleep(0.5)


def past_startup_grace(began: float) -> None:
    """Return once a scheduler started after ``began`` is past its startup grace: for that long
    a fresh scheduler holds a task nobody holds (after a restart its holders register again),
    which a cluster pays once when it starts, not per pull (a pull right after the start waited
    up to 0.7 s for its first blob)."""
    time.sleep(max(0.0, began + SchedulingConfig().startup_grace + 0.1 - time.monotonic()))


def pull_argv(ref: str, dest: Path, conf: Path | None) -> list[str]:
    argv = ["skopeo"]
    if conf is not None:
        argv += ["--registries-conf", str(conf)]
    return [*argv, "copy", "--quiet", f"docker://{ref}", f"dir:{dest}", "--src-tls-verify=false"]


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    began = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    return time.monotonic() - began, r


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a live process has used so far (it must be alive)."""
    used = process_cpu_s(pid)
    if used is None:
        raise SystemExit(f"image_pull: process {pid} is gone")
    return used


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Skopeo:
    """``skopeo copy docker://REF dir:OUT``: layers one at a time, each checked and fsynced."""

    tools = ("skopeo",)

    def __init__(self, root: Path, registry: Any, image: Any) -> None:
        self.root, self.registry, self.image = root, registry, image

    def pull(self, ref: str, mirror: str | None) -> tuple[float, bool, dict[str, float]]:
        dest = self.root / "out"
        shutil.rmtree(dest, ignore_errors=True)
        conf = registries_conf(self.root / "r.conf", self.registry.host, mirror) if mirror else None
        settle()
        began = children_cpu_s()
        t, r = timed(pull_argv(ref, dest, conf))
        cpu = {"skopeo": children_cpu_s() - began}
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr)
            return t, False, cpu
        assert_dir_image(dest, self.image)
        return t, True, cpu


class Ctr:
    """``ctr images pull`` against a containerd of its own (fresh for every pull): layers fetched
    side by side (three at a time) and unpacked by the native snapshotter."""

    tools = ("containerd", "ctr")

    def __init__(self, root: Path, registry: Any, image: Any) -> None:
        self.root, self.registry, self.image = root, registry, image
        self.count = 0

    def pull(self, ref: str, mirror: str | None) -> tuple[float, bool, dict[str, float]]:
        self.count += 1
        ctd = Containerd(self.root / f"ctd{self.count}")
        try:
            why = ctd.wait()
            if why is not None:
                raise SystemExit(f"image_pull: {why}")
            certs = self.root / f"certs{self.count}.d"
            if mirror:
                hosts_dir(certs, self.registry.host, self.registry.url, mirror)
            else:
                (certs / self.registry.host).mkdir(parents=True)
                (certs / self.registry.host / "hosts.toml").write_text(f'server = "{self.registry.url}"\n')
            settle()
            began, ctd_began = children_cpu_s(), cpu_s(ctd.child.pid)
            argv = ["ctr", "-a", str(ctd.sock), "images", "pull", "--hosts-dir", str(certs)]
            t, r = timed([*argv, "--snapshotter", "native", ref])
            cpu = {"containerd": cpu_s(ctd.child.pid) - ctd_began, "ctr": children_cpu_s() - began}
            if r.returncode != 0:
                print(r.stderr + r.stdout, file=sys.stderr)
                return t, False, cpu
            held = set(ctd.ctr("content", "ls", "-q").stdout.split())
            return t, all(b.digest in held for b in self.image.blobs), cpu
        finally:
            ctd.stop()
            shutil.rmtree(self.root / f"ctd{self.count}", ignore_errors=True)


CLIENTS = {"skopeo": Skopeo, "containerd": Ctr}
# The floor's daemon: blobs forwarded as registry requests, not fetched through the swarm.
PASS_THROUGH = {"proxy": {"rules": [{"regx": "blobs/sha256.*", "direct": True}]}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="200MiB", help="total layer content")
    ap.add_argument("--layers", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--client", choices=sorted(CLIENTS), default="skopeo", help="who pulls (timed)")
    ap.add_argument("--memory", choices=MODES, default="resident", help=MEMORY_HELP)
    args = ap.parse_args()
    for tool in ("docker-registry", "skopeo", *CLIENTS[args.client].tools):
        if shutil.which(tool) is None:
            print(f"image_pull: {tool} is not installed", file=sys.stderr)
            return 2
    size = parse_size(args.size)
    root = Path(tempfile.mkdtemp(prefix="dfimg-", dir="/tmp"))
    result: dict[str, Any] = {
        "image_size": args.size,
        "layers": args.layers,
        "runs": args.runs,
        "client": args.client,
    }
    ok = True
    registry = None
    memory = contextlib.ExitStack()
    try:
        result["memory"] = memory.enter_context(resident_memory(as_is=args.memory == "as-is")).to_json()
        registry = start_registry(root / "registry")
        image = build_image(root / "layout", [size // args.layers] * args.layers, tag="v1")
        registry.push(image, "bench/app")
        ref = f"{registry.host}/bench/app:v1"
        result["blob_bytes"] = image.blob_bytes
        client = CLIENTS[args.client](root, registry, image)
        direct_s: list[float] = []
        mirror_s: list[float] = []
        node_s: list[float] = []
        pass_s: list[float] = []
        cpu_mirror: dict[str, dict[str, float]] = {}

        def mirrored(i: int, topology: str) -> float:
            """One cold pull through a fresh swarm's mirror; its time (and CPU in ``cpu_mirror``)."""
            nonlocal ok
            began = time.monotonic()
            config = PASS_THROUGH if topology == "pass" else None
            swarm = Swarm(
                root / f"swarm{i}-{topology}", registry, peers=1, seed=topology == "up", config=config
            )
            try:
                past_startup_grace(began)
                before = registry.blob_bytes()
                pids = {"registry": registry.child.pid, **{c.name: c.pid for c in swarm.children}}
                cpu_before = {k: cpu_s(pid) for k, pid in pids.items()}
                t, pulled, client_cpu = client.pull(ref, swarm.proxy(0))
                cpu = {k: round(cpu_s(pid) - cpu_before[k], 2) for k, pid in pids.items()}
                cpu.update({k: round(v, 2) for k, v in client_cpu.items()})
                cpu_mirror[topology] = cpu
                ok &= pulled
                if topology != "pass":
                    ok &= all(swarm.holds_blob(0, b.digest) for b in image.blobs)
                ok &= registry.blob_bytes() - before == image.blob_bytes
                return t
            finally:
                swarm.close()
                if not args.keep:
                    shutil.rmtree(root / f"swarm{i}-{topology}", ignore_errors=True)

        for i in range(args.runs):
            reg_cpu = cpu_s(registry.child.pid)
            t, pulled, cpu_direct = client.pull(ref, None)
            cpu_direct["registry"] = cpu_s(registry.child.pid) - reg_cpu
            ok &= pulled
            direct_s.append(t)
            mirror_s.append(mirrored(i, "up"))
            node_s.append(mirrored(i, "node"))
            pass_s.append(mirrored(i, "pass"))
        # CPU seconds per process in the last run: where the mirror's extra work goes.
        result["last_run_cpu_s"] = {
            "direct": {k: round(v, 2) for k, v in cpu_direct.items()},
            "mirror_up": cpu_mirror.get("up", {}),
            "mirror_node": cpu_mirror.get("node", {}),
            "mirror_pass": cpu_mirror.get("pass", {}),
        }
        result["direct_s"] = [round(x, 2) for x in direct_s]
        result["mirror_s"] = [round(x, 2) for x in mirror_s]
        result["node_s"] = [round(x, 2) for x in node_s]
        result["ratio"] = round(statistics.median(mirror_s) / statistics.median(direct_s), 3)
        result["ratio_node"] = round(statistics.median(node_s) / statistics.median(direct_s), 3)
        result["pass_s"] = [round(x, 2) for x in pass_s]
        result["ratio_pass"] = round(statistics.median(pass_s) / statistics.median(direct_s), 3)
        result["target_ratio"] = 1.1

        for topology, key in (("up", "concurrent_3"), ("node", "concurrent_3_node")):
            began = time.monotonic()
            swarm = Swarm(root / f"swarm3-{topology}", registry, peers=3, seed=topology == "up")
            try:
                past_startup_grace(began)
                before = registry.blob_bytes()
                procs = []
                settle()
                began = time.monotonic()
                for i in range(3):
                    conf = registries_conf(root / f"r{i}.conf", registry.host, swarm.proxy(i))
                    dest = root / f"c{i}"
                    shutil.rmtree(dest, ignore_errors=True)
                    procs.append(subprocess.Popen(pull_argv(ref, dest, conf), stdout=subprocess.PIPE,
                                                  stderr=subprocess.PIPE, text=True))  # fmt: skip
                for p in procs:
                    _, err = p.communicate(timeout=900)
                    if p.returncode != 0:
                        print(err, file=sys.stderr)
                    ok &= p.returncode == 0
                result[f"{key}_wall_s"] = round(time.monotonic() - began, 2)
                for i in range(3):
                    assert_dir_image(root / f"c{i}", image)
                served = registry.blob_bytes() - before
                result[f"{key}_registry_blob_bytes"] = served
                result[f"{key}_registry_ratio"] = round(served / image.blob_bytes, 4)
            finally:
                swarm.close()
    finally:
        if registry is not None:
            registry.stop()
        memory.close()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    result["ok"] = bool(ok)
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

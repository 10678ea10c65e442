"""Mixed-wire swarms: which daemons run as plain Dragonfly peers, and the config they get.

Why: issue 15 asks that a swarm where some daemons speak only Dragonfly's wire
(``wire.extensions: false``, no Damselfly extensions) still distributes as well,
so ``damselfly bench swarm --plain-peers K [--plain-seed]`` must run those
daemons beside extension ones and report each group. Two decisions live here,
apart from the runner so that unit tests pin them down:

* **Which peers.** The K plain peers are spread evenly over the peer list
  (:func:`interleaved`: every other one when K is half of N), not the first K.
  Peers that arrive in index order (``staggered``) then alternate plain and
  extension in the scheduler's line, so each kind is the other's parent and
  child: the mixed hand-overs are the case worth measuring. In a flash crowd
  the line follows registration order, which no placement controls.
* **Which config.** A plain daemon gets the user's ``--daemon-config`` with
  only ``wire.extensions`` set to false (:func:`plain_config`), written beside
  the run; the user's file itself is never changed or replaced.
* **mTLS** (``--tls``): a CA and one certificate carrying every host's IP are
  made in the run's directory, and every daemon and the scheduler get the
  user's config with ``tls.*`` pointing at them (:func:`write_tls_configs`),
  so every link of the run (gRPC and the piece port) is mutual TLS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..errors import InvalidArgument

DAMSELFLY = "damselfly"  # the daemon's default: Damselfly's extensions wherever both ends speak them
DRAGONFLY = "dragonfly"  # wire.extensions: false, Dragonfly's wire only
WIRES = (DAMSELFLY, DRAGONFLY)


def interleaved(n: int, k: int) -> list[int]:
    """The indices of ``k`` of ``n`` peers spread evenly: ``n=8, k=4`` gives 1, 3, 5, 7; ``k=2`` gives 2, 6.

    Each index sits in the middle of its share ``n/k`` of the list, so the first
    peer stays an extension one unless ``k == n``.
    """
    if not 0 <= k <= n:
        raise InvalidArgument(f"--plain-peers {k}: choose 0 to {n} (the number of peers)")
    return [int((j + 0.5) * n / k) for j in range(k)]


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InvalidArgument(f"cannot read daemon config {path}: {e}") from None
    if not isinstance(data, dict):
        raise InvalidArgument(f"daemon config {path} must be a mapping at the top level")
    return data


def plain_config(user_config: Path | None) -> dict[str, Any]:
    """``user_config`` (None: an empty config) with ``wire.extensions: false`` merged in; every
    other key as the user wrote it, ``wire``'s other keys included."""
    data = {} if user_config is None else _read_yaml(user_config)
    wire = data.get("wire")
    if wire is not None and not isinstance(wire, dict):
        raise InvalidArgument(f"daemon config {user_config}: 'wire' must be a mapping, not {wire!r}")
    data["wire"] = {**(wire or {}), "extensions": False}
    return data


def write_plain_config(user_config: Path | None, path: Path) -> Path:
    """Write :func:`plain_config` to ``path`` (YAML) for the plain daemons' ``--config``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(plain_config(user_config), sort_keys=False))
    return path


def write_tls_configs(
    root: Path, ips: list[str], daemon_config: Path | None, scheduler_config: Path | None
) -> tuple[Path, Path]:
    """A CA and a certificate for ``ips`` under ``root/tls``, and the daemon and scheduler
    configs (the user's, with ``tls.*`` set) under ``root/run``: their paths."""
    from ..security.certs import issue, make_ca  # cryptography: only for a TLS run

    make_ca(root / "tls" / "ca", force=True)
    host = issue(root / "tls" / "ca", "swarm", ips=ips, out=root / "tls" / "hosts")
    tls = {"caCert": str(host.ca_cert), "cert": str(host.cert), "key": str(host.key)}
    out = []
    for name, user in (("daemon", daemon_config), ("scheduler", scheduler_config)):
        data = {} if user is None else _read_yaml(user)
        data["tls"] = tls
        path = root / "run" / f"{name}-tls.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        out.append(path)
    return out[0], out[1]


def config_wire(user_config: Path | None) -> str:
    """The wire a daemon started with ``user_config`` alone speaks: a file that already turns
    the extensions off makes every daemon of the run a plain one, and the report must say so."""
    if user_config is None:
        return DAMSELFLY
    from ..config import load_daemon_config  # pydantic: only when a file is given
    from ..errors import ConfigError

    try:
        extensions = load_daemon_config(user_config).wire.extensions
    except ConfigError as e:
        raise InvalidArgument(str(e)) from None
    return DAMSELFLY if extensions else DRAGONFLY

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

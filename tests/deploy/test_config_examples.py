"""deploy/config/*.yaml: generated from config.py, in sync with it, every key with its default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import Field

from damselfly.config import (
    DaemonConfig,
    SchedulerConfig,
    Section,
    load_daemon_config,
    load_scheduler_config,
)
from damselfly.config_example import REGENERATE, Kind, example_yaml, main, render

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "deploy" / "config"


@pytest.mark.parametrize("kind", ["daemon", "scheduler"])
def test_the_committed_example_is_what_config_py_generates(kind: Kind) -> None:
    committed = (CONFIG_DIR / f"{kind}.yaml").read_text()
    assert committed == example_yaml(kind), (
        f"deploy/config/{kind}.yaml is stale: regenerate it with `{REGENERATE}`"
    )


def _without_hostname(tree: dict[str, Any]) -> dict[str, Any]:
    tree = dict(tree)
    tree["host"] = {k: v for k, v in tree["host"].items() if k != "hostname"}
    return tree


def test_the_daemon_example_holds_every_key_at_its_default() -> None:
    on_disk = yaml.safe_load((CONFIG_DIR / "daemon.yaml").read_text())
    defaults = DaemonConfig().model_dump(by_alias=True, mode="json")
    # hostname is computed on each machine, so the example leaves it commented out
    assert on_disk == _without_hostname(defaults)
    loaded = load_daemon_config(CONFIG_DIR / "daemon.yaml")
    assert loaded.model_dump(by_alias=True, mode="json") == defaults


def test_the_scheduler_example_holds_every_key_at_its_default() -> None:
    on_disk = yaml.safe_load((CONFIG_DIR / "scheduler.yaml").read_text())
    defaults = SchedulerConfig().model_dump(by_alias=True, mode="json")
    assert on_disk == defaults
    loaded = load_scheduler_config(CONFIG_DIR / "scheduler.yaml")
    assert loaded.model_dump(by_alias=True, mode="json") == defaults


def test_the_scheduler_gc_ttls_are_spelt_as_dragonflys(tmp_path: Path) -> None:
    f = tmp_path / "scheduler.yaml"
    f.write_text("gc:\n  hostTTL: 60\n  peerTTL: 70\n  taskTTL: 80\n  pendingPeerTTL: 90\n")
    gc = load_scheduler_config(f).gc
    assert (gc.host_ttl, gc.peer_ttl, gc.task_ttl, gc.pending_peer_ttl) == (60, 70, 80, 90)
    assert "  hostTTL: 180.0" in example_yaml("scheduler").splitlines()


def test_each_key_carries_the_comment_written_beside_it_in_config_py() -> None:
    text = example_yaml("daemon")
    lines = text.splitlines()
    at = lines.index("  pieceTimeout: 30.0")
    assert lines[at - 1] == "  # a parent that sends nothing for this long failed the piece"
    at = lines.index("  readTimeout: 60.0")
    assert lines[at - 1] == "  # The origin must send a byte at least this often, or the download fails."
    # a section's docstring sits above the section
    at = lines.index("proxy:")
    assert lines[at - 1] == "# Registry mirror and HTTP(S) proxy on the daemon (Dragonfly's ``proxy.*``)."
    # the hostname is computed at start: commented out, so the example is the same everywhere
    assert "  # hostname: ..." in lines


class _Inner(Section):
    """What an inner section is for."""

    # Two lines
    # above the field.
    depth: int = 3  # and one beside it
    label: str = Field(default="x", description="A described field.")


class _Outer(Section):
    inner: _Inner = Field(default_factory=_Inner)
    names: list[str] = Field(default_factory=lambda: ["a", "b"])
    rate_limit: float = 0.5


def test_a_new_key_and_its_comments_appear_without_more_work() -> None:
    text = render(_Outer(), ["head"])
    assert text == (
        "# head\n"
        "# What an inner section is for.\n"
        "inner:\n"
        "  # Two lines\n"
        "  # above the field.\n"
        "  # and one beside it\n"
        "  depth: 3\n"
        "  # A described field.\n"
        "  label: x\n"
        "\n"
        "names: [a, b]\n"
        "\n"
        "rateLimit: 0.5\n"
    )
    assert _Outer.model_validate(yaml.safe_load(text)) == _Outer()


def test_check_names_a_stale_file_and_write_makes_it_current(tmp_path: Path, capsys: Any) -> None:
    assert main(["--write", str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0
    stale = tmp_path / "scheduler.yaml"
    stale.write_text(stale.read_text().replace("port: 8002", "port: 9002"))
    capsys.readouterr()
    assert main(["--check", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"{stale} is stale" in err and REGENERATE in err
    assert main(["--write", str(tmp_path)]) == 0
    assert main(["--check", str(tmp_path)]) == 0

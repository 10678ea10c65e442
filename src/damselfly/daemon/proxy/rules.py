"""Which proxied requests go through the swarm: pure decisions over the configured rules.

A rule is a URL regex (searched, as Dragonfly does) with what to do on a
match: P2P (the default), ``direct`` (pass through), ``use_tls`` (fetch the
upstream over https), ``redirect`` (send it to another host or URL prefix).
Only GETs can go P2P; the first matching rule decides.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from ...config import ProxyRuleConfig
from ...errors import ConfigError


class Route(enum.Enum):
    P2P = "p2p"
    DIRECT = "direct"


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: re.Pattern[str]
    use_tls: bool = False
    direct: bool = False
    redirect: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one request: how (P2P or pass through) and the URL to fetch upstream."""

    route: Route
    url: str


def compile_rules(configs: Iterable[ProxyRuleConfig]) -> list[Rule]:
    out = []
    for c in configs:
        try:
            pattern = re.compile(c.regx)
        except re.error as e:
            raise ConfigError(f"proxy rule regx {c.regx!r} is not a valid regex: {e}") from e
        out.append(Rule(pattern, use_tls=c.use_tls, direct=c.direct, redirect=c.redirect))
    return out


def _rewrite(url: str, rule: Rule) -> str:
    parts = urlsplit(url)
    if rule.redirect:
        if "://" in rule.redirect:
            target = urlsplit(rule.redirect)
            path = target.path.rstrip("/") + parts.path
            parts = parts._replace(scheme=target.scheme, netloc=target.netloc, path=path)
        else:
            parts = parts._replace(netloc=rule.redirect)
    if rule.use_tls and parts.scheme == "http":
        parts = parts._replace(scheme="https")
    return urlunsplit(parts)


def decide(method: str, url: str, rules: list[Rule], *, use_p2p: bool = False) -> Decision:
    """Route ``method url``: the first rule whose regex is found in the URL decides.

    No matching rule: a GET asked for with ``X-Dragonfly-Use-P2P: true``
    (``use_p2p``) goes through the swarm unchanged, as under Dragonfly's
    default rule (dragonfly-client/src/proxy/mod.rs:457-500); anything else,
    and every method other than GET, passes through unchanged.
    """
    for rule in rules:
        if rule.pattern.search(url):
            target = _rewrite(url, rule)
            if method != "GET" or rule.direct:
                return Decision(Route.DIRECT, target)
            return Decision(Route.P2P, target)
    if use_p2p and method == "GET":
        return Decision(Route.P2P, url)
    return Decision(Route.DIRECT, url)

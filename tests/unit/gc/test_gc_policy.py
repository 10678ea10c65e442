"""The eviction policy: TTL first, then least recently used down to the low watermark."""

from __future__ import annotations

from damselfly.daemon.gc import GCPolicy, TaskUsage, plan_eviction

NOW = 10_000.0


def t(task_id: str, size: int, idle: float, in_use: bool = False) -> TaskUsage:
    return TaskUsage(task_id=task_id, size=size, accessed_at=NOW - idle, in_use=in_use)


def ids(plan: list) -> list[str]:  # type: ignore[type-arg]
    return [e.task_id for e in plan]


def test_ttl_expired_tasks_go_whatever_the_usage() -> None:
    policy = GCPolicy(task_ttl=3600, capacity=0, high_threshold=80, low_threshold=60, recent_window=0)
    plan = plan_eviction([t("a", 10, 4000), t("b", 10, 100), t("c", 10, 3600)], now=NOW, policy=policy)
    assert ids(plan) == ["a", "c"]
    assert {e.reason for e in plan} == {"ttl"}


def test_no_ttl_and_under_the_high_watermark_evicts_nothing() -> None:
    policy = GCPolicy(task_ttl=0, capacity=1000, high_threshold=80, low_threshold=60)
    assert plan_eviction([t("a", 400, 1e6), t("b", 400, 1e6)], now=NOW, policy=policy) == []


def test_over_high_evicts_lru_until_at_or_below_low() -> None:
    policy = GCPolicy(task_ttl=0, capacity=1000, high_threshold=80, low_threshold=60)
    tasks = [t("new", 300, 100), t("old", 300, 900), t("mid", 300, 500)]  # 900 > 800
    plan = plan_eviction(tasks, now=NOW, policy=policy)
    assert ids(plan) == ["old"]  # 600 <= 600: stop
    assert plan[0].reason == "watermark"
    tasks.append(t("oldest", 100, 2000))  # 1000 bytes
    assert ids(plan_eviction(tasks, now=NOW, policy=policy)) == ["oldest", "old"]  # 1000 -> 600


def test_tasks_in_use_are_never_chosen() -> None:
    policy = GCPolicy(task_ttl=60, capacity=1000, high_threshold=50, low_threshold=0)
    tasks = [t("busy", 900, 1e6, in_use=True), t("idle", 100, 1e6)]
    assert ids(plan_eviction(tasks, now=NOW, policy=policy)) == ["idle"]


def test_recently_used_tasks_survive_the_watermark_step() -> None:
    policy = GCPolicy(task_ttl=0, capacity=1000, high_threshold=50, low_threshold=0, recent_window=60)
    tasks = [t("uploading", 900, 5), t("cold", 100, 600)]
    assert ids(plan_eviction(tasks, now=NOW, policy=policy)) == ["cold"]


def test_ttl_evictions_count_towards_the_watermark() -> None:
    policy = GCPolicy(task_ttl=1000, capacity=1000, high_threshold=80, low_threshold=60)
    tasks = [t("expired", 500, 2000), t("a", 400, 500), t("b", 100, 400)]
    # 1000 bytes; the expired task frees 500 -> 500 <= 800: no watermark evictions.
    assert ids(plan_eviction(tasks, now=NOW, policy=policy)) == ["expired"]


def test_ties_break_by_task_id_so_the_plan_is_deterministic() -> None:
    policy = GCPolicy(task_ttl=0, capacity=100, high_threshold=10, low_threshold=0)
    tasks = [t("b", 50, 500), t("a", 50, 500)]
    assert ids(plan_eviction(tasks, now=NOW, policy=policy)) == ["a", "b"]


def test_a_ttl_below_the_recent_window_waits_for_the_window() -> None:
    policy = GCPolicy(task_ttl=1, capacity=0, high_threshold=80, low_threshold=60, recent_window=60)
    assert ids(plan_eviction([t("a", 10, 30), t("b", 10, 61)], now=NOW, policy=policy)) == ["b"]

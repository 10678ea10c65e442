"""Where the scheduler keeps persistent cache tasks (dfcache): in-process or in Redis.

:class:`~.base.PersistentCacheStore` is the interface; :class:`~.memory.MemoryStore`
keeps everything in the scheduler's memory (the embedded ``damselfly up``,
tests), :class:`~.redis_store.RedisStore` in Redis, so tasks outlive a
scheduler and several schedulers share them. :func:`open_store` picks one from
the scheduler's ``database.redis.url``.
"""

from __future__ import annotations

from .base import PersistentCacheStore, open_store, redacted

__all__ = ["PersistentCacheStore", "open_store", "redacted"]

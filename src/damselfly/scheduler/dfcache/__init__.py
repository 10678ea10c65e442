"""dfcache on the scheduler: persistent cache tasks (no origin: their only copies are on
hosts). :mod:`.state` holds the pure state changes and the replica/parent policy,
:mod:`.service` carries them out (replication, TTL, the store), :mod:`.rpc` is the
``scheduler.v2`` persistent-cache methods; where the tasks live: :mod:`..cachestore`."""

"""Persistent cache tasks on the daemon (``damselfly cache import/export/stat/delete``).

A persistent cache task is a file put into the swarm with no origin behind it.

* **Import** (``DfdaemonDownload.UploadPersistentCacheTask``): the file is
  *copied* into the piece store in one pass that also computes every piece's
  crc32 and the content's sha256 (:func:`stage_file`), then announced to the
  scheduler (``UploadPersistentCacheTaskStarted`` / ``Finished``), which asks
  ``replica_count - 1`` other hosts to fetch it. A copy, not a hard link: a
  link shares the inode, so editing or truncating the original in place would
  change the bytes under their recorded crc32 and every replica would reject
  them. The content is fsynced before the task counts as held: there is no
  origin to fetch it again from.
* **Task ID**: Dragonfly's (:func:`persistent_cache_task_id`): the sha256
  of the content's bytes, then the tag, the application, the requested piece
  length (if one was) and ``PERSISTENT_CACHE``, so one file imported on a
  Dragonfly and on a Damselfly daemon is one task. :func:`stage_file` hashes
  it in the import's one pass (a copy of the content's hasher continued with
  :func:`task_id_suffix`). ``--id NAME`` (``content_for_calculating_task_id``)
  names a task instead: its ID is the sha256 of the name alone
  (:func:`named_task_id`); export, stat and delete take the 64-hex ID or the
  name (:func:`resolve_task_id`).
* **Export** (``DfdaemonDownload.DownloadPersistentCacheTask``) and
  **replication** (``DfdaemonUpload.DownloadPersistentCacheTask``, from the
  scheduler): a :class:`CacheConductor` — the normal P2P download with the
  ``AnnouncePersistentCachePeer`` stream instead of ``AnnouncePeer`` and no
  origin — fetches the pieces from the hosts the scheduler names
  (``SyncPersistentCachePieces`` then the piece protocol, crc32 per piece).
  The output is written like dfget's: complete, verified, renamed into place.
* **Expiry**: every copy carries ``expires_at`` (from the scheduler's created
  time plus the TTL); the cache GC removes it then, and never evicts a
  ``persistent`` copy (a replica the scheduler placed) before.

Owner of the downloads' asyncio tasks and of the channels to the scheduler:
:class:`PersistentCache`, closed by the daemon's ``stop``.
"""

from .content import named_task_id, persistent_cache_task_id, resolve_task_id, stage_file, task_id_suffix
from .manager import DEFAULT_REPLICAS, DEFAULT_TTL, PersistentCache
from .rpc import PersistentCacheDownloadRPCs, PersistentCacheUploadRPCs, local_delete_handler

__all__ = [
    "DEFAULT_REPLICAS",
    "DEFAULT_TTL",
    "PersistentCache",
    "PersistentCacheDownloadRPCs",
    "PersistentCacheUploadRPCs",
    "local_delete_handler",
    "named_task_id",
    "persistent_cache_task_id",
    "resolve_task_id",
    "stage_file",
    "task_id_suffix",
]

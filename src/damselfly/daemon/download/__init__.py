"""One download on this daemon, from the request to a verified task in the store.

Where a peer picks its parents: :mod:`.conductor` holds the dialogue with the
scheduler (register, follow its answers, report pieces, reschedule, ask for
more parents, back to source); :mod:`.parents` decides what to ask of which
parent and when a round has stalled (pure policy over plain state, an injected
clock); :mod:`.piece_loop` carries that out (piece syncs, one worker per
piece); :mod:`.picker` chooses which piece to fetch next from which parent
(pure policy, chosen by name); :mod:`.back_to_source` fetches from the origin;
:mod:`.tasks` starts a download or joins the one already running for the task;
:mod:`.output` puts a finished task at the user's output path, atomically.
"""

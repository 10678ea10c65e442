"""One download on this daemon, from the request to a verified task in the store.

Where a peer picks its parents: :mod:`.conductor` holds the dialogue with the
scheduler (register, follow its answers, report pieces, reschedule, back to
source) and drives the piece loop; :mod:`.picker` chooses which piece to fetch
next from which parent (pure policy, chosen by name); :mod:`.tasks` starts a
download or joins the one already running for the task; :mod:`.output` puts a
finished task at the user's output path, atomically.
"""

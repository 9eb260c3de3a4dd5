"""Saying so when the daemon starts without state.

Rules:
* A start with no stored engine state (a new state file, or a store nothing was ever
  committed to) starts every rollout again at its first step. If the daemon ran before, its
  state was lost (the file deleted, a new volume, a changed `state.path`), and a rollout it
  had advanced or rolled back starts over. That is never silent: a warning line, and a
  warning alert `rolloutd/state-lost` through the notifiers.
* `--fresh` is the operator's own reset: still a warning line and an alert, keyed
  `rolloutd/state-fresh`, saying it was requested and where the old file went.
* Both say where flag revisions continue (above the new store's floor), since consumers
  that drop stale revisions must see the new run.
* The alert fires once and the daemon does not resolve it: nothing it can observe later
  ends the condition (a person decides whether the restart at step 1 is right).
"""

from __future__ import annotations

import logging
from pathlib import Path

from rolloutd.adapters.notify import AlertRecord, daemon_alert
from rolloutd.adapters.state import StateStore

log = logging.getLogger("rolloutd.service")


def fresh_state_notice(
    store: StateStore, restored: bool, fresh: bool, now: float
) -> AlertRecord | None:
    """The warning to give when the daemon starts without state (logged here), or None."""
    if restored:
        return None
    kind = "state file" if isinstance(store.path, Path) else "state database"
    if fresh:
        what = "state-fresh"
        moved = store.moved_aside
        before = f"the old state file is now {moved}" if moved else "there was no state file"
        summary = f"state reset as requested (--fresh): {before}"
    elif store.created:
        what = "state-lost"
        summary = (
            f"no {kind} at {store.path}, a new one was created: if rolloutd ran with it "
            "before, that state is lost and rollouts it had advanced or rolled back start over"
        )
    else:
        what = "state-lost"
        summary = f"{kind} {store.path} holds no rollout state (nothing was ever committed)"
    summary += (
        f"; every rollout starts from its first step, and flag revisions continue above "
        f"{store.revision_floor}"
    )
    log.warning("starting without state: %s", summary)
    details = {
        "state_path": str(store.path),
        "requested": "yes" if fresh else "no",
        "revision_floor": str(store.revision_floor),
    }
    return daemon_alert(what, "firing", summary, now, severity="warning", details=details)

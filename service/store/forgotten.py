"""Deleted users, masked in every loaded bundle until a bundle built without them is served.

`DELETE /v1/users/{id}` removes what the system of record and the caches hold about a user and records the deletion
(the `deletions` table). A bundle loaded before that still holds the user: their training history, the items they
saw, their row of the user tower's id embedding. `Forgotten` is the set of deleted users every process holds; a
user it masks is served as a brand-new one (no bundle history, no bundle embedding, no cached embedding), with
only the events they sent after the deletion. The deletions table is the tombstone every replica reads: at start-up
and then every `RECO_BUNDLE_SYNC_S`, each process takes the deletions recorded since it last looked.

A bundle trained from the database records when it read it (`manifest.dataset.read_at`): a user deleted before
that read is absent from it, or present only with the events sent after the deletion, so it is not masked. A bundle
trained from files cannot say whether the files still hold the user: every deleted user is masked in it.
Aggregates trained on everyone (item-item weights, popularity, the towers' shared weights) keep the user's
contribution until the next bundle, which `retrain` builds from the database without their events.
"""

from __future__ import annotations

from service.core.bundle import Bundle

# The deletion's time is the deleting replica's clock, the read's the exporter's: a deletion this close before the
# read is taken as after it (masked), so clocks apart by less never unmask a user the bundle may hold.
CLOCK_SLACK_S = 300.0


class Forgotten:
    """User id -> when it was deleted (Unix seconds, the latest deletion), and the newest deletion row read. Used
    from the event loop only."""

    def __init__(self) -> None:
        self._deleted: dict[str, float] = {}
        self.last_id = 0  # the deletions table's rows up to this id are held

    def __len__(self) -> int:
        return len(self._deleted)

    def add(self, user_id: str, deleted_at: float) -> None:
        self._deleted[user_id] = max(deleted_at, self._deleted.get(user_id, deleted_at))

    def take(self, rows: list[tuple[int, str, float]]) -> list[str]:
        """Deletion rows (id, user id, deleted at) read from the database, in id order: the users not held
        before, or deleted again since."""
        changed = []
        for row_id, user_id, deleted_at in rows:
            if self._deleted.get(user_id, -1.0) < deleted_at:
                changed.append(user_id)
            self.add(user_id, deleted_at)
            self.last_id = max(self.last_id, row_id)
        return changed

    def masks(self, user_id: str, bundle: Bundle) -> bool:
        """Whether `bundle` may hold what the user did before their deletion."""
        deleted_at = self._deleted.get(user_id)
        if deleted_at is None or user_id not in bundle.user_index:
            return False
        read_at = bundle.manifest.dataset.get("read_at")
        return not isinstance(read_at, int | float) or deleted_at >= read_at - CLOCK_SLACK_S

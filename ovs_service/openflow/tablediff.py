"""What to send so that a bridge's live table becomes the saved one.

A restore after a restart meets an empty table and just adds. A restore onto
a live table sends only the difference, as `ovs-ofctl replace-flows` does:
the flows it adds, then strict deletes of flows the snapshot lacks (never
of a key it adds: the add has replaced that flow). Flows that are already
there are left alone: their counters and learned state stay,
and Open vSwitch 3.1 aborts when one bundle deletes and re-adds flows whose
`learn` actions use `delete_learned`.

Memory stays small for big tables: the saved flows are kept as sorted
arrays of 64-bit hashes (of each message and of its key: 16 bytes a flow),
not as messages.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

from ovs_service.openflow import state as st
from ovs_service.openflow.ofproto import OFPGC_MODIFY


class SavedFlows:
    """The saved flow_mods' hashes, which of them the live table already has,
    and the hashes of their keys (table, priority, match)."""

    def __init__(self, version: int, messages: Iterable[bytes]) -> None:
        hashes, keys = array("q"), array("q")
        for m in messages:
            hashes.append(hash(m))
            keys.append(hash(st.flow_key(version, m)))
        self.hashes = array("q", sorted(hashes))
        self.keys = array("q", sorted(keys))
        self.present = bytearray(len(self.hashes))
        self.version = version

    def has_key_of(self, message: bytes) -> bool:
        """Whether a saved flow has the table, priority and match of `message`."""
        h = hash(st.flow_key(self.version, message))
        i = bisect_left(self.keys, h)
        return i < len(self.keys) and self.keys[i] == h

    def mark(self, message: bytes) -> bool:
        """Mark a live flow as saved; False if the snapshot does not have it."""
        h = hash(message)
        i = bisect_left(self.hashes, h)
        if i < len(self.hashes) and self.hashes[i] == h:
            self.present[i] = 1
            return True
        return False

    def missing(self, messages: Iterable[bytes]) -> Iterator[bytes]:
        """The saved messages the live table lacks (`messages` re-read in saved order)."""
        for message in messages:
            i = bisect_left(self.hashes, hash(message))
            if not self.present[i]:
                yield message


def flow_changes(version: int, live: Iterable[bytes], saved: Callable[[], Iterable[bytes]]
                 ) -> tuple[list[bytes], Callable[[], Iterator[bytes]]]:
    """(strict deletes of live flows not saved, a function yielding the adds).

    A live flow that differs from a saved one only in what follows its key
    (actions, cookie, timeouts, flags) is not deleted: the saved flow's add
    replaces it in place. Deleting it too would delete, by its key, the
    saved flow just added.
    """
    table = SavedFlows(version, saved())
    deletes = [st.flow_delete_strict(version, m) for m in live
               if not table.mark(m) and not table.has_key_of(m)]
    return deletes, lambda: table.missing(saved())


def group_changes(version: int, live: Iterable[bytes], saved: Iterable[bytes]
                  ) -> tuple[list[bytes], list[bytes]]:
    """(deletes of groups not saved, adds or modifies for groups that differ)."""
    now = {st.group_id_of_mod(version, m): m for m in live}
    wanted = {st.group_id_of_mod(version, m): m for m in saved}
    deletes = [st.delete_group(version, g) for g in now if g not in wanted]
    changes = []
    for group_id, message in wanted.items():
        if group_id not in now:
            changes.append(message)
        elif now[group_id] != message:
            changes.append(st.group_with_command(version, message, OFPGC_MODIFY))
    return deletes, changes

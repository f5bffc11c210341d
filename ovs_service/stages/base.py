"""What every stage is: a name, a save into a snapshot, a restore from one.

A stage saves one kind of state (the OpenFlow tables, the datapaths' port
numbers, the internal interfaces and the firewall) into the snapshot being
written, and restores it from a verified snapshot. `operations` runs the
stages it is given in the order of `stages.REGISTRY`, and knows nothing of
what each one does; a new stage is a module here and one line there.

A restore runs in three passes over the stages, so that nothing is touched
before every stage has checked what it will read:
1. `check`: refuse (raise) before anything changes;
2. `restore`: put the state back; a report, a raise only when nothing of
   the stage could be tried;
3. `verify`: look again once every stage has run (port numbers, say).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from ovs_service.errors import OvsServiceError

if TYPE_CHECKING:
    from ovs_service import ovs
    from ovs_service.store import Snapshot, SnapshotWriter


class Report(Protocol):
    """What a stage did: whether it all went well, one line or more for
    people, a JSON document (under `key` in the restore's), and the error to
    exit with when it did not."""

    key: ClassVar[str]

    @property
    def ok(self) -> bool: ...

    def __str__(self) -> str: ...

    def to_doc(self) -> Any: ...

    def error(self) -> OvsServiceError | None: ...


@dataclass(frozen=True)
class SaveScope:
    """What a save covers: the bridges named (or all the switch has)."""

    bridges: Sequence[ovs.Bridge]


@dataclass(frozen=True)
class SaveResult:
    """What a stage's save adds to the manifest, and the bridges it could not save."""

    extra: dict[str, Any]
    failed: dict[str, str]  # bridge -> why
    errors: Sequence[OvsServiceError] = ()


@dataclass(frozen=True)
class RestoreScope:
    """What a restore covers.

    `bridges`: the snapshot's bridges being restored (those the switch has,
    among those named); `named`: the bridges the operator named, None for
    every bridge; `module_reloaded`: the kernel module was reloaded, so
    what it re-created needs more putting back (see the interfaces stage).
    """

    bridges: Sequence[str]
    named: Collection[str] | None = None
    module_reloaded: bool = False


class Stage(ABC):
    """One kind of state, saved into a snapshot and restored from it."""

    name: ClassVar[str]

    @abstractmethod
    def save(self, writer: SnapshotWriter, scope: SaveScope) -> SaveResult:
        """Write this stage's files into the snapshot being written."""

    def check(self, snapshot: Snapshot, scope: RestoreScope) -> None:  # noqa: B027
        """Raise if the restore could not be done: before anything is touched."""

    @abstractmethod
    def restore(self, snapshot: Snapshot, scope: RestoreScope) -> Report:
        """Put this stage's state back from the snapshot."""

    def verify(self, snapshot: Snapshot, scope: RestoreScope) -> Report | None:
        """Look again once every stage has restored; None when there is nothing to see."""
        return None

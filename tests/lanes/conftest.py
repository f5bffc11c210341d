"""The lanes' one `lane` fixture: a systemd namespace running the switch of
`tests.harness.lane`, one per test module. A module that needs more on the
switch names it in `LANE_EXTRA` (a function given the switch)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.lane import Lane, running_lane


@pytest.fixture(scope="module")
def lane(request: pytest.FixtureRequest) -> Iterator[Lane]:
    with running_lane(getattr(request.module, "LANE_EXTRA", None)) as running:
        yield running

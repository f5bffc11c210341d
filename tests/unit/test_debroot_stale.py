"""When a cached Debian root is rebuilt (tests/harness/debroot.py)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.harness import debroot


def test_stale_when_marker_missing_key_changed_or_old(tmp_path: Path) -> None:
    spec = debroot.TRIXIE
    assert debroot.stale_reason(spec, tmp_path) == "no build marker"
    now = time.time()
    (tmp_path / debroot.MARKER).write_text(json.dumps({"key": spec.key(), "built": now}))
    assert debroot.stale_reason(spec, tmp_path, now=now) is None
    other = debroot.RootSpec("trixie", "trixie", packages=(*spec.packages, "tcpdump"))
    assert debroot.stale_reason(other, tmp_path, now=now) == (
        "its package list or build recipe changed"
    )
    late = now + (debroot.MAX_AGE_DAYS + 1) * 86400
    assert debroot.stale_reason(spec, tmp_path, now=late) == (
        f"older than {debroot.MAX_AGE_DAYS} days"
    )

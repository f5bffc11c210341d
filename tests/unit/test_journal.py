"""The transaction journal as recover reads it: damaged, foreign, or from another version."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ovs_service import journal


def test_a_journal_with_fields_we_do_not_know_is_still_read(tmp_path: Path) -> None:
    doc = {"op": "force-reload-kmod", "pid": 1 << 22, "started": 1.0, "snapshot": "s",
           "step": "reload-module", "state": "done", "from_a_later_version": [1]}
    (tmp_path / journal.JOURNAL).write_text(json.dumps(doc))
    record = journal.read(tmp_path)
    assert record is not None
    assert (record.op, record.step, record.snapshot) == ("force-reload-kmod", "reload-module", "s")


def test_an_unreadable_journal_names_no_live_process(tmp_path: Path) -> None:
    for text in ("{not json", "[1, 2]", '{"op": "restart"}'):
        (tmp_path / journal.JOURNAL).write_text(text)
        record = journal.read(tmp_path)
        assert record is not None and record.state == "unreadable", text
        assert not record.alive, text  # kill(0, 0) would have said yes
        assert journal.active(tmp_path) is None


def test_recover_takes_over_what_the_kernel_side_left(tmp_path: Path) -> None:
    dead = journal.Record(op="force-reload-kmod", pid=1 << 22, started=1.0, snapshot="s",
                          datapaths_deleted=True, step="reload-module", state="done")
    tx = journal.Journal(tmp_path, "recover")
    tx.take_over(dead)
    record = journal.read(tmp_path)
    assert record is not None and record.pid == os.getpid()
    assert (record.op, record.snapshot, record.datapaths_deleted) == ("recover", "s", True)
    assert record.step is None

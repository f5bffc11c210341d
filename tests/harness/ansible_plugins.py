"""The checkout's Ansible collection (ansible/), its plugins loaded as plain
modules for the unit tests, when ansible-core is there to import."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.harness import REPO

COLLECTION = REPO / "ansible"
MODULE = COLLECTION / "plugins" / "modules" / "ovs_service.py"


def ansible_core() -> bool:
    """Whether ansible-core is importable: the checkout's own ansible/ folder
    is a namespace package of that name, with no module_utils."""
    try:
        return importlib.util.find_spec("ansible.module_utils.basic") is not None
    except ModuleNotFoundError:
        return False


def load(path: Path, name: str) -> ModuleType:
    """The plugin at `path`, imported as `name`; the test is skipped without ansible-core."""
    if not ansible_core():
        pytest.skip(f"ansible-core is not importable by {sys.executable}")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""Fixtures of the systemd tier; the machinery is in ``nsboot.py``."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nsboot import NsSystemd, ensure_rootfs


@pytest.fixture(scope="session")
def rootfs() -> Path:
    t0 = time.monotonic()
    path = ensure_rootfs()
    print(f"\nsystemd tier: rootfs ready in {time.monotonic() - t0:.1f}s ({path})")
    return path


@pytest.fixture
def nsd(rootfs: Path) -> Iterator[NsSystemd]:
    """A freshly booted systemd (fresh overlay), killed with SIGKILL afterwards."""
    t0 = time.monotonic()
    box = NsSystemd(rootfs)
    try:
        state = box.wait_running()
        print(f"systemd tier: booted to {state!r} in {time.monotonic() - t0:.1f}s")
        yield box
    finally:
        box.stop()

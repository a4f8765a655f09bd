"""Fixtures of the systemd tier; the machinery is in ``nsboot.py``."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from nsboot import CACHE, NsSystemd, ensure_rootfs

REPO = Path(__file__).resolve().parents[2]


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


#: build-deb.sh copies the whole tree, but these parts never reach the package
NOT_PACKAGED = ("tests/", "bench/", "docs/", ".ci/", "dist/")


def source_hash() -> str:
    """sha256 over what build-deb.sh packages (the files git tracks or would track, less
    NOT_PACKAGED: editing a test does not rebuild the package)."""
    r = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                       cwd=REPO, capture_output=True, check=True, timeout=60)
    h = hashlib.sha256()
    for name in sorted(set(r.stdout.decode().split("\0")) - {""}):
        path = REPO / name
        if name.startswith(NOT_PACKAGED) or not path.is_file():
            continue  # deleted in the working tree: build-deb.sh skips it too
        h.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb packaging/build-deb.sh builds from this tree (~25 s), cached by source hash
    in ~/.cache/infergrid/deb/<hash>/ (a change to any packaged file rebuilds it)."""
    t0 = time.monotonic()
    cache = CACHE / "deb" / source_hash()
    debs = list(cache.glob("infergrid_*.deb"))
    if len(debs) == 1:
        print(f"\nsystemd tier: cached {debs[0]}")
        return debs[0]
    out = tmp_path_factory.mktemp("dist")
    r = subprocess.run(["bash", str(REPO / "packaging/build-deb.sh")], capture_output=True,
                       text=True, timeout=600, env={**os.environ, "DIST_DIR": str(out)})
    assert r.returncode == 0, r.stdout + r.stderr
    debs = list(out.glob("infergrid_*.deb"))
    assert len(debs) == 1, r.stdout
    shutil.rmtree(cache.parent, ignore_errors=True)  # keep one build only
    cache.mkdir(parents=True)
    shutil.copy2(debs[0], cache / debs[0].name)
    print(f"\nsystemd tier: built {debs[0].name} in {time.monotonic() - t0:.1f}s")
    return cache / debs[0].name

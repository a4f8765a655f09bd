"""The systemd tier: a real systemd booted as PID 1 of a private namespace (DESIGN.md §9).

    pytest -m systemd tests/systemd

Needs root, ``debootstrap``, ``unshare``/``nsenter`` (util-linux) and overlayfs. A Debian
bookworm minbase root file system is built once (~1 min, ~300 MB) and cached in
``~/.cache/infergrid/rootfs`` (``INFERGRID_ROOTFS`` overrides); every boot runs on a
fresh overlay over it, so tests never change the cache.  The namespace's systemd is
driven from outside with ``nsenter``; at teardown it is killed with SIGKILL, which
ends every process of its PID namespace and drops its mounts.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "infergrid"
ROOTFS = Path(os.environ.get("INFERGRID_ROOTFS", CACHE / "rootfs"))
SUITE = "bookworm"
PACKAGES = "systemd,systemd-sysv,dbus,python3,curl,procps,adduser"
STAMP = ".infergrid-rootfs"
# Units that fail or hang in a namespace without hardware, consoles or logind.
MASKED = [
    "getty.target", "serial-getty@ttyS0.service", "console-getty.service",
    "systemd-timesyncd.service", "systemd-sysctl.service", "systemd-udevd.service",
    "systemd-udev-trigger.service", "systemd-networkd.service", "systemd-resolved.service",
    "systemd-logind.service", "systemd-modules-load.service", "systemd-binfmt.service",
    "sys-kernel-config.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount",
]


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.fail(f"systemd tier needs {', '.join(missing)} (apt-get install debootstrap util-linux)")
    if os.geteuid() != 0:
        pytest.fail("systemd tier needs root (namespaces, mounts, debootstrap)")


def ensure_rootfs() -> Path:
    """The cached bookworm root file system; built (and the noisy units masked) if absent."""
    _need("debootstrap", "unshare", "nsenter")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "rootfs.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = ROOTFS / STAMP
        if stamp.exists() and stamp.read_text() == f"{SUITE} {PACKAGES}\n":
            return ROOTFS
        tmp = ROOTFS.with_name(ROOTFS.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        r = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={PACKAGES}", SUITE, str(tmp)],
            capture_output=True, text=True, timeout=900,
        )
        if r.returncode != 0:
            pytest.fail(f"debootstrap failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        unit_dir = tmp / "etc/systemd/system"
        for unit in MASKED:
            link = unit_dir / unit
            link.unlink(missing_ok=True)
            link.symlink_to("/dev/null")
        (tmp / STAMP).write_text(f"{SUITE} {PACKAGES}\n")
        shutil.rmtree(ROOTFS, ignore_errors=True)
        tmp.rename(ROOTFS)
        return ROOTFS


_BOOT = r"""
set -e
mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$WORK/upper,workdir=$WORK/ovl" "$WORK/root"
R="$WORK/root"
mount -t proc proc "$R/proc"
mount -t sysfs sysfs "$R/sys"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup"
mount -t tmpfs tmpfs "$R/run"
mount -t tmpfs tmpfs "$R/tmp"
mount --rbind /dev "$R/dev"
# pivot_root, not just chroot: a chrooted process may not create user namespaces
# (EPERM), and the units use PrivateUsers=yes.
mkdir -p "$R/.oldroot"
cd "$R"
pivot_root . .oldroot
exec /usr/sbin/chroot . /bin/sh -c 'umount -l /.oldroot && rmdir /.oldroot && exec /lib/systemd/systemd --system'
"""


class NsSystemd:
    """systemd as PID 1 of fresh PID/mount/UTS/IPC/net/cgroup namespaces over an overlay."""

    def __init__(self, lower: Path) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="ig-nsd-", dir="/tmp"))
        for d in ("upper", "ovl", "root"):
            (self.work / d).mkdir()
        self.log_path = self.work / "console.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "LOWER": str(lower), "WORK": str(self.work)}
        self.unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup",
             "--propagation", "private", "bash", "-c", _BOOT],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env,
        )
        self.pid = self._find_systemd(timeout=20)

    def _find_systemd(self, timeout: float) -> int:
        """The host PID of the namespace's PID 1 (unshare's forked child, exec'd into systemd)."""
        deadline = time.monotonic() + timeout
        children = Path(f"/proc/{self.unshare.pid}/task/{self.unshare.pid}/children")
        while time.monotonic() < deadline:
            if self.unshare.poll() is not None:
                raise RuntimeError(f"namespace boot failed:\n{self.console()}")
            try:
                for pid in children.read_text().split():
                    if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                        return int(pid)
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"systemd did not start:\n{self.console()}")

    def console(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def run_in(self, cmd: str | list[str], timeout: float = 60,
               check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run a command inside (all its namespaces, its root); a str goes to /bin/sh -c."""
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else cmd
        r = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "-r", "-w", *argv],
            capture_output=True, text=True, timeout=timeout,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"{argv} rc={r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def popen_in(self, argv: list[str]) -> subprocess.Popen[str]:
        """Start a command inside without waiting (stdout/stderr are pipes)."""
        return subprocess.Popen(
            ["nsenter", "-t", str(self.pid), "-a", "-r", "-w", *argv],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )

    def path(self, inside: str) -> Path:
        """A path inside the namespace's root, as seen from the host."""
        return Path(f"/proc/{self.pid}/root") / inside.lstrip("/")

    def put(self, src: Path, inside: str, mode: int | None = None) -> None:
        dst = self.path(inside)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        if mode is not None:
            dst.chmod(mode)

    def wait_running(self, timeout: float = 60) -> str:
        """Wait for boot to finish; returns the final `systemctl is-system-running` state."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.run_in(["systemctl", "is-system-running"], timeout=10).stdout.strip()
            if state in ("running", "degraded"):
                return state
            time.sleep(0.2)
        raise AssertionError(f"system state {state!r} after {timeout}s\n{self.console()}")

    def stop(self) -> None:
        try:
            os.kill(self.pid, 9)
        except ProcessLookupError:
            pass
        try:
            self.unshare.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.unshare.kill()
            self.unshare.wait(timeout=10)
        self._log.close()
        shutil.rmtree(self.work, ignore_errors=True)

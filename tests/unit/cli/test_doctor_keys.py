"""``infergridctl doctor`` on API keys (issue 14 item 9): warns on keys printed in our own
examples and on weak ones; the list of published keys is kept in step with the repo."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from infergridd.cli import doctor as d
from infergridd.cli.doctor.keys import PUBLIC_KEY_SHA256, check_keys, is_public
from infergridd.config import load, loads
from infergridd.keys import new_key

ROOT = Path(__file__).resolve().parents[3]
#: where the project prints keys for people to copy
PUBLISHED = ["README.md", "configs", "docs", "man", "packaging"]
KEY = re.compile(r"\bsk-[A-Za-z0-9_-]{3,}")


def _published_keys() -> set[str]:
    keys: set[str] = set()
    for name in PUBLISHED:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        for f in files:
            try:
                keys |= set(KEY.findall(f.read_text()))
            except UnicodeDecodeError:
                continue
    return keys


def test_every_published_key_is_known_to_doctor() -> None:
    keys = _published_keys()
    assert {"sk-quiet-demo", "sk-flooder-demo"} <= keys  # the scan finds what it should
    for k in keys:
        assert is_public(k), f"{k} is printed in the repo but doctor does not know it"
    assert len(PUBLIC_KEY_SHA256) >= 2


def _cfg(*keys: str) -> str:
    ks = ", ".join(f"'{k}'" for k in keys)
    return f"version: 1\ntenants: [{{name: acme, keys: [{ks}]}}]\n"


def test_published_keys_warn_plain_or_hashed() -> None:
    sha = "sha256:" + hashlib.sha256(b"sk-quiet-demo").hexdigest()
    for key in ("sk-quiet-demo", sha, "sk-bench-acme"):
        [c] = check_keys(loads(_cfg(key)))
        assert c.status == d.WARN and "anyone can use it" in c.detail, (key, c.line())
        assert "rotate-key acme" in c.fix


def test_weak_keys_warn_strong_ones_pass() -> None:
    for weak in ("hunter2", "sk-" + "a" * 40, "sk-" + "Xk9" * 12, "sk-my-team-key"):
        [c] = check_keys(loads(_cfg(weak)))
        assert c.status == d.WARN and "weak key" in c.detail, (weak, c.line())
    [c] = check_keys(loads(_cfg(new_key(), new_key())))
    assert c.status == d.OK and "none published or weak" in c.detail
    assert "2 in plain text" in c.detail
    [c] = check_keys(loads(_cfg("sha256:" + "ab" * 32)))
    assert c.status == d.OK and "plain text" not in c.detail


def test_the_quickstart_warns_and_the_package_config_has_no_keys() -> None:
    quick = check_keys(load(str(ROOT / "configs/quickstart_fairness.yaml")))
    assert [c.status for c in quick] == [d.WARN, d.WARN]
    packaged = load(str(ROOT / "packaging/config/infergrid.yaml"))
    assert packaged.tenants == [] and packaged.auth == "keys"
    [c] = check_keys(packaged)
    assert c.status == d.OK and "no keys" in c.detail
    assert not KEY.search((ROOT / "packaging/config/infergrid.yaml").read_text())


def test_doctor_runs_the_key_check(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(_cfg("sk-flooder-demo") + "models: [{name: demo, engine: sim}]\n")
    checks = d.run_checks(str(cfg), str(tmp_path / "run"), gpu_probe=None)
    keys = [c for c in checks if c.check == "keys"]
    assert keys and keys[0].status == d.WARN

"""The configuration file: present, readable, and valid."""

from __future__ import annotations

import os
from pathlib import Path

from ...config import Config, ConfigError, load
from .check import FAIL, OK, Check, group_name, mode_of, user_name


def check_config(path: str) -> tuple[Check, Config | None]:
    p = Path(path)
    try:
        present = p.exists()
    except PermissionError:
        return Check(FAIL, "config", f"cannot look into {p.parent}",
                     "run as root or as a member of the infergrid group"), None
    if not present:
        return Check(FAIL, "config", f"{p} does not exist, and no running InferGrid said "
                     "which file it uses",
                     "pass --config FILE (the file given to `infergrid serve`), or install "
                     "the package's default"), None
    if not os.access(p, os.R_OK):
        st = p.stat()
        return Check(FAIL, "config", f"cannot read {p} (mode {mode_of(st)}, "
                     f"{user_name(st.st_uid)}:{group_name(st.st_gid)})",
                     "run as root or as a member of its group"), None
    try:
        cfg = load(p)
    except ConfigError as exc:
        return Check(FAIL, "config", str(exc),
                     "fix that key (man 5 infergrid.yaml; `infergridd check-config --config "
                     f"{p}` re-checks)"), None
    return Check(OK, "config", f"{p}: {len(cfg.models)} models, {len(cfg.tenants)} tenants"), cfg

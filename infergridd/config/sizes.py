"""Memory sizes in the config: parsing ``"16GiB"``, showing bytes, and what fits on a GPU."""

from __future__ import annotations

import re

from .schema import Config, ModelConfig

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4,
          "KI": 1024, "MI": 1024**2, "GI": 1024**3, "TI": 1024**4}


def parse_size(value: str | int | float, total: int = 0) -> int:
    """Bytes from ``123``, ``"16GiB"``, ``"500MB"``, or a fraction of ``total`` (0 < x <= 1)."""
    if isinstance(value, bool):
        raise ValueError("expected a size, got a boolean")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and 0 < value <= 1:
            if total <= 0:
                raise ValueError("a fraction needs the GPU's total memory (gpu.total_memory)")
            return int(value * total)
        if value < 0:
            raise ValueError("a size cannot be negative")
        return int(value)
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"not a size: {value!r} (use bytes, or e.g. 16GiB, 500MB)")
    unit = (m.group(2) or "").upper().rstrip("B")
    return int(float(m.group(1)) * _UNITS[unit])


def model_memory(m: ModelConfig, total: int) -> int:
    """GPU bytes one replica of ``m`` holds when awake (0: not accounted)."""
    return parse_size(m.memory, total)


def model_sleep_memory(m: ModelConfig, total: int) -> int:
    """GPU bytes one replica keeps while asleep, never more than it holds awake."""
    return min(parse_size(m.sleep_memory, total), model_memory(m, total))


def fmt_bytes(n: int) -> str:
    """``51539607552`` → ``"48.0 GiB"``: every memory figure shown to an operator."""
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def check_fit(cfg: Config, total: int | list | None = None,
              links: dict[tuple[int, int], int] | None = None) -> None:
    """Refuse a model set that can never run on the machine's GPUs.

    ``total``: a list of ``placement.Device`` (the supervisor's, from NVML or
    ``gpu.devices``), or one GPU's bytes (the one-device shorthand; 0: unlimited),
    or None: the config's own devices.  Called at config load and again by the
    supervisor once NVML has said how many GPUs there are and how big.  Pinned
    models are never evicted, so they must fit together on each GPU; the
    preloaded ones must fit together (else ``/health`` could never answer 200);
    every engine must fit alone; ``gpus`` and ``devices`` must name GPUs the
    machine has (``placement.check_placement``: each error names the model).
    """
    from .placement import Device, check_placement, configured_devices

    if total is None:
        devices = configured_devices(cfg)
    elif isinstance(total, int):
        devices = [Device(cfg.gpu.device_index, total)]
    else:
        devices = total
    check_placement(cfg, devices, links)

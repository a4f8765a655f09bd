"""The GPU through NVML, and its free memory against what the preloaded models need."""

from __future__ import annotations

from collections.abc import Callable

from ...config import Config, fmt_bytes, model_memory, parse_size
from .check import FAIL, OK, WARN, Check

GPU_ENGINES = ("vllm", "sglang")

GpuProbe = Callable[[int], tuple[str, int, int]]  # device index -> (name, total, free)


def nvml_probe(index: int) -> tuple[str, int, int]:
    """(name, total bytes, free bytes) of GPU ``index`` via pynvml (nvidia-ml-py)."""
    import pynvml  # type: ignore[import-not-found]

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(h)
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        return (name.decode() if isinstance(name, bytes) else str(name)), int(mem.total), \
            int(mem.free)
    finally:
        pynvml.nvmlShutdown()


def check_gpu(cfg: Config, probe: GpuProbe | None = nvml_probe,
              engines_running: bool = False) -> Check:
    """GPU visible through NVML, and its free memory against the preloaded models' needs."""
    wants_gpu = any(m.engine in GPU_ENGINES for m in cfg.models)
    configured = parse_size(cfg.gpu.total_memory)
    idx = cfg.gpu.device_index
    try:
        if probe is None:
            raise ImportError("no probe")
        name, total, free = probe(idx)
    except ImportError:
        status = WARN if wants_gpu else OK
        return Check(status, "gpu", "NVML not available (pynvml not installed): GPU not checked",
                     "pip install 'infergridd[nvml]' (nvidia-ml-py) into InferGrid's Python" if wants_gpu
                     else "")
    except Exception as exc:  # noqa: BLE001 - NVMLError and friends: report, never crash
        status = WARN if wants_gpu else OK
        return Check(status, "gpu", f"no GPU {idx} through NVML: {exc}",
                     "check the NVIDIA driver (nvidia-smi) and gpu.device_index"
                     if wants_gpu else "")
    basis = configured or total
    need = sum(model_memory(m, basis) * m.replicas for m in cfg.models if m.preload or m.pinned)
    where = f"GPU {idx} {name}: {fmt_bytes(free)} free of {fmt_bytes(total)}"
    if configured > total:
        return Check(FAIL, "gpu", f"{where}; gpu.total_memory is {fmt_bytes(configured)}",
                     "lower gpu.total_memory to the GPU's size (or 0: from NVML)")
    if need > free and not engines_running:
        return Check(FAIL, "gpu", f"{where}; the preloaded models need {fmt_bytes(need)}",
                     "free the GPU (nvidia-smi shows who holds it) or preload fewer models")
    if need > free:
        return Check(OK, "gpu", f"{where}; the preloaded models ({fmt_bytes(need)}) are "
                     "running")
    return Check(OK, "gpu", f"{where}; preloaded models need {fmt_bytes(need)}")

"""Engine command lines are contracts with other projects' CLIs: pin every flag."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from infergridd import protocol as p
from infergridd.config import EngineAssistConfig, ModelConfig
from infergridd.engines import AdapterConfigError, adapter_for
from infergridd.engines.base import args_to_flags, cpu_list
from infergridd.engines.openai import OpenAIAdapter
from infergridd.engines.sglang import SglangAdapter
from infergridd.engines.sim import SimSglangAdapter, SimVllmAdapter
from infergridd.engines.vllm import VllmAdapter
from infergridd.supervisor.assist import prepare_launch


def test_vllm_command_exact() -> None:
    m = ModelConfig(name="tiny", engine="vllm", python="/opt/py/bin/python",
                    args={"model": "/models/tiny", "max_model_len": 2048, "enforce_eager": True,
                          "dtype": "float32"},
                    extra_args=["--seed", "1"], env={"HF_HUB_OFFLINE": "1"}, max_num_seqs=4,
                    memory=0.5)
    a = adapter_for(m)
    assert isinstance(a, VllmAdapter)
    spec = a.launch_spec(41000, "KEY")
    assert spec.argv == [
        "/opt/py/bin/python", "-m", "vllm.entrypoints.openai.api_server",
        "--model", "/models/tiny", "--served-model-name", "tiny",
        "--host", "127.0.0.1", "--port", "41000",
        "--max-num-seqs", "4", "--scheduling-policy", "priority",
        "--gpu-memory-utilization", "0.5",
        "--max-model-len", "2048", "--enforce-eager", "--dtype", "float32",
        "--seed", "1",
    ]
    assert spec.env == {"HF_HUB_OFFLINE": "1", "VLLM_API_KEY": "KEY"}  # never in argv
    assert a.supports_priority and a.priority_sign == 1 and not a.supports_sleep
    assert a.engine_priority(3) == 3
    assert a.endpoint(41000) == "http://127.0.0.1:41000"


def test_vllm_sleep_mode_kv_bytes_and_affinity() -> None:
    m = ModelConfig(name="t", engine="vllm",
                    args={"model": "/m", "enable_sleep_mode": True, "kv_cache_memory": "1GiB"},
                    cpu_affinity=[0], max_num_seqs=2)
    a = adapter_for(m)
    spec = a.launch_spec(1, "k")
    assert a.supports_sleep
    assert spec.argv[:4] == ["taskset", "-c", "0", sys.executable]
    assert "--enable-sleep-mode" in spec.argv
    i = spec.argv.index("--kv-cache-memory-bytes")
    assert spec.argv[i + 1] == str(1024**3)
    assert "--gpu-memory-utilization" not in spec.argv
    assert spec.env == {"VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_OMP_THREADS_BIND": "0",
                        "VLLM_API_KEY": "k"}


def test_vllm_needs_model_dir() -> None:
    with pytest.raises(AdapterConfigError, match="args.model"):
        adapter_for(ModelConfig(name="t", engine="vllm"))


def test_sglang_command_exact() -> None:
    m = ModelConfig(name="big", engine="sglang", python="python3",
                    args={"model_path": "/models/big", "enable_memory_saver": True,
                          "mem_fraction_static": 0.8},
                    max_num_seqs=16)
    a = adapter_for(m)
    assert isinstance(a, SglangAdapter)
    a.work_dir = Path("/run/infergrid/supervisor/engines")
    spec = a.launch_spec(30000, "K")
    key_file = "/run/infergrid/supervisor/engines/big-30000.sglang-key.yaml"
    assert spec.files == {key_file: b'api-key: "K"\n'}  # 0600, written by the supervisor
    assert spec.argv == [
        "python3", "-m", "sglang.launch_server", "--model-path", "/models/big",
        "--served-model-name", "big", "--host", "127.0.0.1", "--port", "30000",
        "--config", key_file, "--max-running-requests", "16", "--enable-metrics",
        "--enable-priority-scheduling", "--enable-memory-saver",
        # engine assist (the default): SGLang's own flags for light-first steps
        "--schedule-policy", "fcfs", "--priority-scheduling-preemption-threshold", "1",
        "--chunked-prefill-size", "1024",
        "--mem-fraction-static", "0.8",
    ]
    assert a.supports_sleep and a.priority_sign == -1 and a.engine_priority(2) == -2


def test_sglang_without_memory_saver_cannot_sleep() -> None:
    a = adapter_for(ModelConfig(name="s", engine="sglang", args={"model": "/m"}))
    assert not a.supports_sleep
    assert "--enable-memory-saver" not in a.launch_spec(1, "k").argv


def test_sim_command_exact() -> None:
    m = ModelConfig(name="demo", engine="sim", max_num_seqs=3,
                    args={"profile": "fast", "seed": 7, "fail_after": 10})
    a = adapter_for(m)
    assert isinstance(a, SimVllmAdapter)
    assert a.kind == "sim" and a.supports_sleep and a.supports_priority
    spec = a.launch_spec(5000, "K")
    assert spec.env["INFERGRID_SIM_API_KEY"] == "K"
    assert spec.argv == [
        sys.executable, "-m", "infergridd.sim", "--host", "127.0.0.1", "--port", "5000",
        "--model", "demo", "--max-num-seqs", "3",
        "--scheduling-policy", "priority", "--engine-assist",
        "--profile", "fast", "--seed", "7", "--fail-after", "10",
    ]


def test_engine_assist_flags_and_switch() -> None:
    """On by default with its settings in the environment; ``false`` drops every flag;
    an SGLang flag set in ``args`` wins over assist's own."""
    on = adapter_for(ModelConfig(name="d", engine="sim")).launch_spec(1, "k")
    assert "--engine-assist" in on.argv and on.assist == "on"
    assert json.loads(on.env["INFERGRID_ASSIST"])["heavy_chunk_tokens"] == 512
    off = adapter_for(ModelConfig(name="d", engine="sim", engine_assist=False)).launch_spec(1, "k")
    assert "--engine-assist" not in off.argv and "INFERGRID_ASSIST" not in off.env
    assert off.assist == "off" and "false" in off.assist_reason
    sg = adapter_for(ModelConfig(name="s", engine="sglang", args={
        "model": "/m", "chunked_prefill_size": 4096}, engine_assist=EngineAssistConfig(
            preempt=False))).launch_spec(1, "k")
    assert "--priority-scheduling-preemption-threshold" not in sg.argv
    assert sg.argv.count("--chunked-prefill-size") == 1
    assert sg.argv[sg.argv.index("--chunked-prefill-size") + 1] == "4096"
    sg_off = adapter_for(ModelConfig(name="s", engine="sglang", args={"model": "/m"},
                                     engine_assist=False)).launch_spec(1, "k")
    assert "--schedule-policy" not in sg_off.argv and sg_off.assist == "off"


def test_sim_sglang_personality() -> None:
    """The SGLang personality gets SGLang's command line, engine assist included: the very
    flags ``SglangAdapter`` passes (``sglang_assist_flags``), not InferGrid's step policy;
    its flags are the proof, so the supervisor reports it on at launch."""
    a = adapter_for(ModelConfig(name="d", engine="sim", max_num_seqs=2,
                                args={"personality": "sglang"}))
    assert isinstance(a, SimSglangAdapter)
    assert a.priority_sign == -1
    spec = a.launch_spec(1, "k")
    assert spec.argv == [
        sys.executable, "-m", "infergridd.sim", "--host", "127.0.0.1", "--port", "1",
        "--model", "d", "--max-running-requests", "2",
        "--enable-priority-scheduling",
        "--schedule-policy", "fcfs", "--priority-scheduling-preemption-threshold", "1",
        "--chunked-prefill-size", "1024",
        "--personality", "sglang",
    ]
    assert "INFERGRID_ASSIST" not in spec.env
    assert spec.assist == "flags" and "SGLang's own flags" in spec.assist_reason
    st = p.EngineStatus(engine_id="d-0", model="d", kind="sim")
    prepare_launch(spec, st, Path("/nonexistent/d-0.assist.json"))
    assert st.assist == "on" and st.assist_reason.startswith("flags: SGLang's own flags")
    assert "INFERGRID_ASSIST_STATS" not in spec.env  # no stats file to wait for
    off = adapter_for(ModelConfig(name="d", engine="sim", args={"personality": "sglang"},
                                  engine_assist=False)).launch_spec(1, "k")
    assert "--schedule-policy" not in off.argv and "--engine-assist" not in off.argv
    assert "--enable-priority-scheduling" in off.argv
    assert off.assist == "off" and "false" in off.assist_reason


def test_python_with_words() -> None:
    a = adapter_for(ModelConfig(name="d", engine="sim", python="conda run -n x python"))
    assert a.launch_spec(1, "k").argv[:5] == ["conda", "run", "-n", "x", "python"]


def test_openai_is_unmanaged() -> None:
    a = adapter_for(ModelConfig(name="ext", engine="openai", url="https://api.example.com/v1/",
                                api_key="sk-x", max_num_seqs=32))
    assert isinstance(a, OpenAIAdapter)
    assert not a.managed and not a.supports_sleep and not a.supports_priority
    assert a.endpoint(0) == "https://api.example.com"
    assert a.max_num_seqs() == 32


def test_flag_helpers() -> None:
    assert cpu_list([3, 0, 1, 2, 7]) == "0-3,7"
    assert cpu_list([1]) == "1"
    assert args_to_flags({"a_b": True, "c": False, "d": None, "e": [1, 2], "f": 1.5}) == [
        "--a-b", "--e", "1", "2", "--f", "1.5"]


# --------------------------------------------------------------------------- issue 14, item 3
# An engine key on the command line is readable by every local user (ps, /proc/PID/cmdline);
# where the engine can, it listens on a Unix socket in the runtime dir instead of a port.

@pytest.mark.parametrize("cfg", [
    {"engine": "vllm", "args": {"model": "/m", "enable_sleep_mode": True}},
    {"engine": "sglang", "args": {"model_path": "/m", "enable_memory_saver": True}},
    {"engine": "sim"},
    {"engine": "sim", "args": {"personality": "sglang"}},
    {"engine": "vllm", "args": {"model": "/m"}, "cpu_affinity": [0]},
])
def test_no_engine_key_on_any_command_line(cfg: dict, tmp_path: Path) -> None:
    key = "0123456789abcdef" * 3
    a = adapter_for(ModelConfig(name="m", **cfg))
    a.work_dir = tmp_path
    for sock in (None, tmp_path / "m-0.sock"):
        a.socket_path = sock
        spec = a.launch_spec(4000, key)
        assert not any(key in word for word in spec.argv), spec.argv
        assert "--api-key" not in spec.argv
        secret_in = [v for v in spec.env.values() if v == key] + [
            f for f, data in spec.files.items() if key.encode() in data]
        assert len(secret_in) == 1  # it still reaches the engine, one way


def test_vllm_and_sim_listen_on_the_supervisors_socket(tmp_path: Path) -> None:
    sock = tmp_path / "m-0.sock"
    for cfg in ({"engine": "vllm", "args": {"model": "/m"}}, {"engine": "sim"}):
        a = adapter_for(ModelConfig(name="m", **cfg))
        a.socket_path = sock
        argv = a.launch_spec(4000, "k").argv
        assert argv[argv.index("--uds") + 1] == str(sock)
        assert "--port" not in argv and "--host" not in argv
        assert a.endpoint(4000) == f"unix:{sock}"
    # SGLang (and the sim standing in for it) has no Unix listener: loopback, key on every
    # control route; a socket path too long for sun_path falls back to loopback too
    for cfg in ({"engine": "sglang", "args": {"model_path": "/m"}},
                {"engine": "sim", "args": {"personality": "sglang"}}):
        a = adapter_for(ModelConfig(name="m", **cfg))
        a.work_dir, a.socket_path = tmp_path, sock
        assert "--uds" not in a.launch_spec(4000, "k").argv
        assert a.endpoint(4000) == "http://127.0.0.1:4000"
    a = adapter_for(ModelConfig(name="m", engine="sim"))
    a.socket_path = Path("/" + "d" * 120) / "m-0.sock"
    assert "--uds" not in a.launch_spec(4000, "k").argv
    assert a.endpoint(4000) == "http://127.0.0.1:4000"

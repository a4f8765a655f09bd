#!/bin/bash
# A/B on a quiet machine: fast_path off (/work/main at a84b568) vs on (/tmp/ig-on: same commit, default flipped), alternated
PY=/work/main/.venv/bin/python
OUT=/tmp/ab5/out
mkdir -p $OUT
for round in 1 2 3; do
  for tree in /work/main /tmp/ig-on; do
    tag=$(basename $tree)-r$round
    echo "== overhead $tag $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
    (cd $tree && $PY bench/overhead.py --seconds 8 --concurrency 1,64 --rates '' --litellm '' \
        --processes 1 --n-boot 300 --out $OUT/ov-$tag) > $OUT/ov-$tag.log 2>&1
    grep -iE "added|stream" $OUT/ov-$tag.log | tail -8
  done
done
echo "== end $(date -u +%T)"

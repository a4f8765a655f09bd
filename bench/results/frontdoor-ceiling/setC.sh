#!/bin/bash
cd /work/main
run() { # name gen pin
  local out=${OUT:-/tmp/ceil}/$1
  local pinarg=""; [ "$3" = pin ] && pinarg="--loadgen-cpu 1"
  echo "=== $1 start $(date -u +%T) $(uptime | sed 's/.*load/load/')" | tee -a ${OUT:-/tmp/ceil}/load.log
  timeout 200 .venv/bin/python bench/overhead.py --concurrency '' --rates 200,300,400,600,800,1000,1500 --ceiling-seconds 4 --litellm '' --processes 1 --loadgen $2 $pinarg --out $out > $out.txt 2>&1
  echo "=== $1 end $(date -u +%T) rc=$? $(uptime | sed 's/.*load/load/')" | tee -a ${OUT:-/tmp/ceil}/load.log
  grep "req/s" $out.txt | sed 's/; CPU.*//' | tee -a ${OUT:-/tmp/ceil}/load.log
}
for r in 5 6; do
  if [ $r = 5 ]; then order="raw-pin aiohttp-pin raw-nopin aiohttp-nopin"; else order="aiohttp-nopin raw-nopin aiohttp-pin raw-pin"; fi
  for x in $order; do run $x-r$r ${x%-*} ${x#*-}; done
done

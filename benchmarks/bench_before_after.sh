#!/usr/bin/env bash
# Before/after timing of two gpkern trees, alternating, in one sitting: the KeOps products of
# bench_keops_ab.py (RBF, Matern 5/2, periodic; ratio to GPyTorch), the KeOps NNGP product
# (bench_keops_nngp.py) and bench_kronecker.py. Each tree runs the scripts it contains.
# Usage: bash benchmarks/bench_before_after.sh BEFORE_TREE AFTER_TREE [N] [REPEATS]
set -u
before=$1 after=$2 N=${3:-10000} R=${4:-5}
export KEOPS_CACHE_FOLDER=${KEOPS_CACHE_FOLDER:-/tmp/ab_keops_cache} KEOPS_VERBOSE=0 OMP_NUM_THREADS=1
PY=${PY:-python}
here=$(cd "$(dirname "$0")" && pwd)
for round in 1 2; do
  for tree in "$before" "$after"; do
    echo "== keops round $round tree $tree $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd "$tree" && PYTHONPATH="$tree" $PY benchmarks/bench_keops_ab.py --n "$N" --repeats "$R" --kernels rbf matern52 periodic)
    (cd "$tree" && PYTHONPATH="$tree" $PY "$here/bench_keops_nngp.py" "$N" "$R")
  done
done
for round in 1 2; do
  for tree in "$before" "$after"; do
    echo "== kronecker round $round tree $tree $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
    (cd "$tree" && PYTHONPATH="$tree" $PY benchmarks/bench_kronecker.py --dense-max 1024 --out "/tmp/kron_$(basename "$tree")_$round.md")
  done
done

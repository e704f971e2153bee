#!/bin/bash
# The second GPU lease (docs/benchmarks/gpu.md): one command, on the device machine from the
# repository root, with constriction's cp312 wheel in .whl/ and the shared volumes in .gpu/data/
# (both carried). GPU work is pinned to cores 0-3; the device's other 12 cores meanwhile run the
# router comparison at equal CPU time, grid (one network) vs grid4 (4 experts, top-1), 2 threads
# each, every job on 2 cores of its own, so no job shares a core with another.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site MOEC_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1
{ nvidia-smi -L; python3 -c "import torch; print(torch.__version__, torch.version.cuda)"; nproc
  lscpu | grep -E "Model name|^CPU\(s\)|Thread"; } > "$OUT/env.txt" 2>&1
command -v taskset > /dev/null || taskset() { shift 2; "$@"; }
cd benchmarks || exit 1
core=4
for ratio in ${TTQ_RATIOS:-256}; do
  for vol in hipct ct_head mri4d; do
    for variant in grid grid4; do
      taskset -c "$core,$((core + 1))" timeout "${TTQ_S:-480}" python3 time_to_quality.py run \
        --volumes "$vol" --ratios "$ratio" --variants "$variant" --seconds 300 --every 60 \
        --threads 2 --out "$OUT/ttq" > "$OUT/ttq_${vol}_${ratio}_${variant}.log" 2>&1 &
      core=$((core + 2))
    done
  done
done
gpu() { taskset -c 0-3 "$@"; }
(cd .. && gpu timeout 90 python3 -m pytest -q -m cuda -p no:cacheprovider -W ignore \
  -o addopts= -p no:qt tests/test_grid_model.py tests/test_cuda.py 2>&1 | tail -6) \
  > "$OUT/pytest_cuda.txt"
for run in ${PROFILES:-1:1 1:8 4:8}; do
  set -- ${run/:/ }
  gpu timeout 60 python3 grid_profile.py macaque-mirror256 256 "$1" --control-every "$2" \
    --steps 30 > "$OUT/profile_e$1_c$2.txt" 2>&1
done
gpu timeout 200 python3 gpu_grid.py macaque-mirror256:256:1:60 macaque-mirror256:256:4:60 \
  > "$OUT/grid256.jsonl" 2>&1
gpu timeout 110 python3 gpu_session.py --run macaque:256:grid:60 --deadline 100 \
  --out "$OUT/session" > "$OUT/session.txt" 2>&1
wait
cat "$OUT/env.txt" "$OUT/pytest_cuda.txt"; head -1 "$OUT"/profile_*.txt
tail -qn 1 "$OUT"/ttq_*.log
# only a few files come back from the device: everything in one archive
tar czf /tmp/lease.tgz -C "$OUT" . && rm -rf "${OUT:?}"/* && mv /tmp/lease.tgz "$OUT/"
tar xzf "$OUT/lease.tgz" -O ./grid256.jsonl ./session.txt 2>/dev/null | grep -v "^$" | tail -8

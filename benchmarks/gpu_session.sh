#!/bin/bash
# The GPU lease's one script, as run on 2026-12-04 (docs/benchmarks/gpu.md): the cuda tests,
# then the grid family on a 256³ volume. On the device machine, from the repository root, with
# constriction's cp312 wheel in .whl/ and the shared volumes in .gpu/data/ (both carried).
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/src:/tmp/site MOEC_DATA=$PWD/.gpu/data PYTHONUNBUFFERED=1
nvidia-smi -L > "$OUT/env.txt"
python3 -c "import torch; print(torch.__version__, torch.version.cuda)" >> "$OUT/env.txt"
# -p no:qt -o qt_api=: the device image has no pytest-qt; the cuda tests need no Qt
timeout 60 python3 -m pytest -q -m cuda -p no:cacheprovider -W ignore -o addopts= \
    tests/test_grid_model.py tests/test_cuda.py 2>&1 | tail -8 | tee "$OUT/pytest_cuda.txt"
# shellcheck disable=SC2086  # one word per run
timeout "${GRID_S:-200}" python3 benchmarks/gpu_grid.py $GRID_RUNS 2>&1 | tee "$OUT/grid256.jsonl"

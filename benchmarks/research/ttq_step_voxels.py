"""``benchmarks/time_to_quality.py`` with the grid trainer's voxels a CPU step set by ``MV``.

Session 21 asked whether a volume of many latents should see more voxels a step on a CPU
(its step cost is mostly the latents': the macaque at 256x 23.4 ms with 32,640 voxels,
37.3 ms with 125,216). It should not, at equal time (docs/benchmarks/notes.md, session 21).
Run from ``benchmarks/`` with the library on ``PYTHONPATH``::

    MV=131072 python research/ttq_step_voxels.py run --volumes macaque --ratios 256 \\
        --variants grid --seconds 300 --every 100 --threads 2 --out /tmp/ttq/mv131072
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import napari_moec.families.grid.train as grid_train

grid_train.CPU_MAX_VOXELS = int(os.environ["MV"])

import time_to_quality  # noqa: E402

sys.exit(time_to_quality.main())

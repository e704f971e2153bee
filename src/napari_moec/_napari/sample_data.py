"""Sample data for File › Open Sample: a real CT volume bundled with the package.

The VTK "headsq" head CT (quarter resolution, BSD-3-Clause, see ``data/LICENSE-ct_head.txt``) is
small enough to train on a laptop CPU in seconds, and real enough that its expert partition means
something (air, soft tissue, bone).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

__all__ = ["CT_HEAD_SPACING", "ct_head", "ct_head_sample"]

_DATA = Path(__file__).parent.parent / "data"  # napari_moec/data, beside the package's code
#: Voxel size (Z, Y, X) in mm, the value VTK's medical examples use for this data set.
CT_HEAD_SPACING = (1.5, 3.2, 3.2)


def ct_head() -> np.ndarray:
    """The bundled head CT as a (93, 64, 64) uint16 ZYX array.

    Returns
    -------
    ndarray
        Raw CT values 0..3926, unchanged from the VTK data set.
    """
    return tifffile.imread(_DATA / "ct_head_vtk_headsq.tif")


def ct_head_sample() -> list[tuple]:
    """npe2 sample-data command: the head CT as an Image layer with its physical voxel size.

    Returns
    -------
    list of LayerData tuples
        One image layer, scaled in mm so that training previews and the reader's layers overlay it.
    """
    meta = {
        "name": "ct_head",
        "scale": CT_HEAD_SPACING,
        "units": "mm",
        "colormap": "gray",
        "metadata": {
            "source": "VTK headsq (quarter resolution), BSD-3-Clause",
            "licence": str(_DATA / "LICENSE-ct_head.txt"),
        },
    }
    return [(ct_head(), meta, "image")]

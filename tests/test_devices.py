"""Where a compression runs: device and threads."""

import pytest

from napari_moec.devices import available_cores, check_threads, resolve_device
from napari_moec.errors import ConfigError


def test_devices_and_threads():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")
    assert check_threads(None) == available_cores() >= 1
    assert check_threads(3) == 3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="threads"):
            check_threads(bad)

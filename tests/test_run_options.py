"""The one options -> configs translation of the CLI, the widget and ``napari_moec.compress``."""

import pytest

import napari_moec as nm
from napari_moec.config import ArchConfig, BoundConfig, QuantConfig, RunConfig, TrainConfig
from napari_moec.errors import ConfigError
from napari_moec.run_options import configs_from_options, option_names

from .conftest import smooth_volume


def test_no_options_are_the_declared_defaults():
    assert configs_from_options({}) == {
        "arch": ArchConfig(),
        "train": TrainConfig(),
        "quant": QuantConfig(),
        "run": RunConfig(),
        "bound": BoundConfig(),
    }


def test_options_land_in_their_dataclass_and_other_names_are_ignored():
    configs = configs_from_options(
        {"steps": 7, "num_experts": None, "precision": "fp16", "input": "x.tif", "ratio": 8}
    )
    assert configs["train"] == TrainConfig(steps=7)
    assert configs["arch"] == ArchConfig(num_experts=None)
    assert configs["quant"] == QuantConfig(precision="fp16")
    assert configs["run"] == RunConfig()


def test_options_replace_fields_of_the_base_configs():
    base = {"train": TrainConfig(steps=11, batch_size=512), "arch": None}
    configs = configs_from_options({"steps": 3}, base)
    assert configs["train"] == TrainConfig(steps=3, batch_size=512)
    assert configs["arch"] == ArchConfig()


def test_a_bad_value_raises_the_dataclass_error():
    with pytest.raises(ConfigError, match="steps"):
        configs_from_options({"steps": -1})


def test_option_names_are_every_declared_option():
    names = option_names()
    assert {"steps", "num_experts", "precision", "device", "threads"} <= names
    assert "ratio" not in names


def test_compress_refuses_an_unknown_option():
    with pytest.raises(ConfigError, match="unknown option 'stepz'"):
        nm.compress(smooth_volume((8, 8, 8)), 4, stepz=3)

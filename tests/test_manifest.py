"""The npe2 manifest is valid and its python_names import without pulling Qt into the core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

import napari_moec  # noqa: E402

MANIFEST = Path(napari_moec.__file__).parent / "napari.yaml"


def test_manifest_validates():
    manifest = npe2.PluginManifest.from_file(MANIFEST)
    assert manifest.name == "napari-moec"
    # Import every python_name, as `npe2 validate` does.
    manifest.validate_imports()
    contributions = manifest.contributions
    assert [w.display_name for w in contributions.widgets] == ["MoEC compression"]
    assert contributions.readers[0].filename_patterns == ["*.moec"]
    assert [s.key for s in contributions.sample_data] == ["ct_head"]


def test_npe2_validate_cli():
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", str(MANIFEST), "--imports"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_entry_point_finds_the_manifest():
    manifest = npe2.PluginManifest.from_distribution("napari-moec")
    assert manifest.name == "napari-moec"

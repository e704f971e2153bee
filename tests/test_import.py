import subprocess
import sys


def test_import_is_qt_free():
    code = (
        "import sys, napari_moec; assert 'qtpy' not in sys.modules and 'PyQt6' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_cuda_marker_registered(pytestconfig):
    assert any("cuda" in m for m in pytestconfig.getini("markers"))

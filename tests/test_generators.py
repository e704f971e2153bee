import pytest

from napari_moec.generators import drain


def _job(log):
    try:
        yield 1
        yield 2
        return "done"
    finally:
        log.append("closed")


def test_drain_returns_the_value_and_passes_every_event():
    seen, log = [], []
    assert drain(_job(log), seen.append) == "done"
    assert seen == [1, 2]
    assert log == ["closed"]


def test_drain_without_callback():
    assert drain(_job([])) == "done"


def test_an_exception_in_the_callback_closes_the_job_first():
    log = []

    def boom(event):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        drain(_job(log), boom)
    assert log == ["closed"]

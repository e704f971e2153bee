import pytest

from napari_moec.generators import drain, relay


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


def test_relay_yields_each_event_transformed_and_returns_the_value():
    log, seen = [], []

    def front():
        result = yield from relay(_job(log), lambda e: e * 10)
        return result + "!"

    assert drain(front(), seen.append) == "done!"
    assert seen == [10, 20]
    assert log == ["closed"]


def test_closing_the_relay_closes_the_job():
    log = []
    front = relay(_job(log), str)
    assert next(front) == "1"
    front.close()  # what a napari worker's quit does between two yields
    assert log == ["closed"]

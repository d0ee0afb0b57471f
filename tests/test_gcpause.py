"""paused_gc: the collector is off while batches are in flight, and back on after."""
import gc
import threading

import pytest

from transforms.gcpause import paused_gc


@pytest.fixture(autouse=True)
def collector_on():
    gc.enable()
    yield
    gc.enable()


def test_nested_pauses_resume_only_when_the_outermost_ends():
    with paused_gc():
        assert not gc.isenabled()
        with paused_gc():  # a fused downstream step inside the batch
            assert not gc.isenabled()
        assert not gc.isenabled()
    assert gc.isenabled()


def test_resumes_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with paused_gc():
            1 / 0
    assert gc.isenabled()


def test_a_collector_switched_off_by_the_user_stays_off():
    gc.disable()
    with paused_gc():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_a_generator_left_unfinished_resumes_when_closed():
    def batch():
        with paused_gc():
            yield 1
            yield 2
    it = batch()
    next(it)
    assert not gc.isenabled()
    it.close()
    assert gc.isenabled()


def test_overlapping_batches_in_threads():
    inside, release = threading.Barrier(3), threading.Event()
    seen = []

    def work():
        with paused_gc():
            inside.wait()
            release.wait()
            seen.append(gc.isenabled())

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    inside.wait()
    assert not gc.isenabled()
    release.set()
    for t in threads:
        t.join()
    assert seen == [False, False]  # one finishing does not resume it for the other
    assert gc.isenabled()

"""Batches computed ahead in worker processes are exactly the serial ones, in order."""

import numpy as np
import pytest

from src_models.config import CorruptionConfig
from src_models.data import PatchSampler
from src_models.prefetch import prefetched_batches


def _sampler() -> PatchSampler:
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (40, 50, 1)).astype("float32") for _ in range(3)]
    return PatchSampler(images, 16, 4, CorruptionConfig(sigma_range=(5, 50)), seed=3)


def test_prefetched_batches_equal_serial_batches_in_step_order():
    sampler = _sampler()
    got = list(prefetched_batches(sampler, 5, 11, workers=2, ahead=3))
    assert len(got) == 6
    for step, (noisy, clean) in zip(range(5, 11), got, strict=True):
        ref_noisy, ref_clean = sampler.batch(step)
        np.testing.assert_array_equal(noisy, ref_noisy)
        np.testing.assert_array_equal(clean, ref_clean)


def test_closing_early_stops_workers_without_computing_the_rest():
    import time

    sampler = _sampler()
    gen = prefetched_batches(sampler, 0, 100_000, workers=1, ahead=2)
    first = next(gen)
    t0 = time.perf_counter()
    gen.close()  # must not hang, nor compute the 99 999 batches never asked for
    assert time.perf_counter() - t0 < 30
    np.testing.assert_array_equal(first[0], sampler.batch(0)[0])


def test_an_error_in_a_worker_reaches_the_caller():
    with pytest.raises(ValueError, match="no batch 0"):
        next(prefetched_batches(_PicklableBroken(), 0, 3, workers=1))


def test_zero_workers_runs_inline():
    sampler = _sampler()
    inline = list(prefetched_batches(sampler, 0, 2, workers=0))
    np.testing.assert_array_equal(inline[1][1], sampler.batch(1)[1])


class _PicklableBroken:
    """A batch source whose every batch fails (module level: spawned workers unpickle it)."""

    def batch(self, step):
        raise ValueError(f"no batch {step}")

"""Batches computed ahead in worker processes are exactly the serial ones, in order."""

import numpy as np

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
    for step, (noisy, clean) in zip(range(5, 11), got):
        ref_noisy, ref_clean = sampler.batch(step)
        np.testing.assert_array_equal(noisy, ref_noisy)
        np.testing.assert_array_equal(clean, ref_clean)


def test_zero_workers_runs_inline():
    sampler = _sampler()
    inline = list(prefetched_batches(sampler, 0, 2, workers=0))
    np.testing.assert_array_equal(inline[1][1], sampler.batch(1)[1])

"""A sharded analysis on a local Ray instance equals the single-process report."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bundlelab.io import analyze_dump, save_dump


@pytest.mark.slow
def test_a_sharded_analysis_on_ray_equals_the_concatenated_dump(ray_local, tmp_path, rng):
    from bundlelab.executors import get_executor

    layers = {
        "conv": rng.integers(0, 3, (48, 2, 2)).astype(np.float32),
        "fc": rng.choice([0.0, -0.0, 1.0, np.nan], size=(48, 3)),
    }
    labels = rng.integers(0, 4, 48)
    save_dump(tmp_path / "whole.npz", layers, labels)
    (tmp_path / "shards").mkdir()
    for k, (lo, hi) in enumerate([(0, 5), (5, 30), (30, 48)]):
        save_dump(tmp_path / "shards" / f"rank-{k}.npz",
                  {name: value[lo:hi] for name, value in layers.items()}, labels[lo:hi])
    options = {"nonfinite": "keep", "weight_amplitude": 1.0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = analyze_dump(tmp_path / "whole.npz", **options).to_dict(include_ids=True)
        with get_executor("ray", progress=False) as executor:
            sharded = analyze_dump(tmp_path / "shards", executor=executor, **options)
    assert sharded.to_dict(include_ids=True) == expected
    assert ray_local.is_initialized()  # the executor joined the session's Ray, left it running

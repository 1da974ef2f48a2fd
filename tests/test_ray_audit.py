"""A split torch audit on a local Ray instance equals the single-process audit (slow: Ray starts
in about 5 s; skipped with the reason where Ray is not installed)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from test_split_audit import assert_same_report, torch_audit, torch_data, torch_model  # noqa: E402


@pytest.mark.slow
def test_split_torch_audit_on_ray_equals_single_process(ray_local):
    model, (x, y) = torch_model(2), torch_data(n=200)
    kwargs = dict(n_samples=160, seed=5, inference_batch_size=16, learning_rate=0.05)
    single = torch_audit(model, x, y, **kwargs)
    # no workers: as many slices as the local Ray's 2 CPUs hold, each a Ray task
    split = torch_audit(model, x, y, executor="ray", **kwargs)
    assert_same_report(split, single)
    assert max(r.largest_bundle for r in single) > 1
    assert ray_local.is_initialized()  # the audit joined the fixture's Ray and left it running
    from bundlelab.adapters._split import split_plan

    with split_plan("ray", None) as plan:  # what the default cut the subset into
        assert plan.n_slices == 2

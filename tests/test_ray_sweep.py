"""The 4-trial sweep of test_sweep_executor on a local Ray (the session's ``ray_local``): the
same numbers, epoch by epoch, as in-process, although Ray starts its workers with one thread
(the trials pin theirs to this process's count)."""

import json

import pytest

from test_sweep_executor import (  # noqa: F401 - fixtures shared with the in-process sweep
    assert_same,
    budget,
    digits,
    fabric,
    member,
    reference,
    reference_folder,
    run,
    trial_names,
)

pytest.importorskip("torch")


@pytest.mark.slow
def test_a_sweep_on_ray_gives_the_numbers_of_the_in_process_sweep(
        ray_local, reference, reference_folder, fabric, member, digits, budget, tmp_path):
    result = run(fabric, member, digits, budget, tmp_path, executor="ray")
    assert_same(result, reference, tmp_path, reference_folder)
    summary = json.loads((tmp_path / "sweep-progress.json").read_text())
    assert (summary["done"], summary["failed"], summary["total"]) == (4, 0, 4)
    assert [t["name"] for t in summary["tasks"]] == trial_names(budget, member)
    assert ray_local.is_initialized()  # the sweep reused the session's Ray and left it running

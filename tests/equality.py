"""Field-by-field equality of bundle results and reports, for tests that compare two ways of
computing the same thing (split against single pass, batched against plain updates, hooks
against clones)."""

import dataclasses

import numpy as np


def assert_same_result(mine, theirs):
    """Every field of a LayerResult (arrays element by element), naming the first that
    differs."""
    for field in dataclasses.fields(theirs):
        a, b = getattr(mine, field.name), getattr(theirs, field.name)
        if isinstance(b, np.ndarray):
            np.testing.assert_array_equal(a, b, err_msg=field.name)
        else:
            assert a == b, field.name


def assert_same_report(mine, theirs):
    """Every field of every layer (bundle ids, counts, entropies, ...) and every param (w, α,
    |B|, selection, sources)."""
    assert mine.params == theirs.params
    assert mine.names == theirs.names
    for a, b in zip(mine, theirs):
        assert_same_result(a, b)
    assert mine.to_dict(include_ids=True) == theirs.to_dict(include_ids=True)

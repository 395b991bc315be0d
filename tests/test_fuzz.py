"""The project's own fuzz run (issue 12): over a thousand malformed calls across models, data loaders,
threats, attacks, defenses, corruptions, metrics, trainers' configs and the CLI. Each either works
correctly or raises ValueError / TypeError / LookupError / FileNotFoundError with a message that names
the argument. The cases live in ``tests/fuzz_cases/`` (one module per area); see its docstring."""
import collections

import pytest

from fuzz_cases import all_cases, run_case

CASES = all_cases()


def test_the_fuzz_table_is_large_and_ids_are_unique():
    ids = [c.id for c in CASES]
    dup = [i for i, k in collections.Counter(ids).items() if k > 1]
    assert not dup, f"duplicate case ids: {dup[:10]}"
    assert len(CASES) >= 1000, len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_call(case):
    run_case(case)

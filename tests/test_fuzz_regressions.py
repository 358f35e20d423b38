"""Every input bench/fuzz.py kept (tests/fuzz_corpus/<target>/: inputs that crashed a
parser once, ``crash-*``, and inputs of its grown corpus that reached new code,
``corpus-*``) parses or is refused with a typed error; every target's seeds still parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fuzz_targets import CORPUS, TARGETS, check

KEPT = sorted(p for p in CORPUS.glob("*/*") if p.is_file()) if CORPUS.exists() else []


@pytest.mark.parametrize("path", KEPT, ids=[f"{p.parent.name}/{p.name}" for p in KEPT])
def test_an_input_the_fuzzer_kept_parses_or_is_refused_with_a_typed_error(path: Path) -> None:
    check(path.parent.name, path.read_bytes())


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_valid_input_parses_and_its_truncations_are_refused_with_typed_errors(name: str) -> None:
    for seed in TARGETS[name].seeds():
        TARGETS[name].run(seed)  # valid: no refusal at all
        for cut in range(0, len(seed), max(1, len(seed) // 64)):
            check(name, seed[:cut])

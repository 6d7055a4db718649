"""SmolLM2 LoRA and QLoRA on the CPU re-run against their recorded reference losses (tests/reference).

Tolerance 1e-4 relative per step: a repeat on one machine is bitwise equal, and the same runs with MKL
and ATen forced from AVX-512 to AVX2 moved by up to 1.5e-5 (LoRA) and 2.3e-5 (QLoRA)."""

from __future__ import annotations

import pytest

from tests.helpers import check_against_recording


@pytest.mark.parametrize("name", ["smollm2_lora", "smollm2_qlora"])
def test_smollm2_matches_its_recording(name):
    check_against_recording(name)

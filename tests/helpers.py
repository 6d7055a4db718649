"""Helpers shared by test modules."""

from __future__ import annotations

from pathlib import Path

RECORDINGS = Path(__file__).resolve().parent / "reference"


class Interrupted(Exception):
    """Raised from a trainer callback to simulate a run that dies after a given step."""


def interrupt_at(step: int):
    def callback(record):
        if record.step == step:
            raise Interrupted(step)

    return callback


def check_against_recording(name: str) -> None:
    """Re-run a recorded reference config (tests/reference/NAME.json) and hold its per-step losses to the
    recording's tolerance; prints every step."""
    from harness.reference import compare, load_recording, relative_differences, training_losses

    recording, config = load_recording(RECORDINGS / f"{name}.json")
    losses = training_losses(config)
    differences = relative_differences(losses, recording["losses"])
    for step, (ours, theirs, relative) in enumerate(zip(losses, recording["losses"], differences), 1):
        print(f"step {step:2d}: now {ours:.8f}, recorded {theirs:.8f}, rel diff {relative:.1e}")
    drift = compare(recording, losses)
    print(drift.describe())
    assert drift.matches, (
        f"{drift.describe()}. If a deliberate change or an upgrade explains it, re-record with "
        f"`harness reference record {name}`"
    )

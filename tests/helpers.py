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


def compare_with_oracle(label: str, run, initial, result, oracle, *, max_grad_norm: float) -> dict[str, float]:
    """Print the harness and transformers' Trainer (harness.oracle) step by step; return the largest
    relative loss difference ('worst'), the final weights' max |difference| and max |weight|
    ('difference', 'scale'), how far training moved the adapter ('moved') and the share of clipped
    steps ('clipped'), for the caller's assertions."""
    from harness.oracle import trainable_weights, weight_difference

    worst = 0.0
    for record, theirs, lr, norm in zip(result.history, oracle.losses, oracle.learning_rates, oracle.grad_norms):
        relative = abs(record.loss - theirs) / abs(theirs)
        worst = max(worst, relative)
        print(
            f"step {record.step:2d} (epoch {record.epoch}): harness {record.loss:.8f} transformers {theirs:.8f} "
            f"rel diff {relative:.1e}; lr {record.lr:.3e}/{lr:.3e}; grad norm {record.grad_norm:.4f}/{norm:.4f}"
        )
    final = trainable_weights(run.model)
    difference, scale = weight_difference(final, oracle.weights)
    moved, _ = weight_difference(final, initial)
    clipped = sum(r.grad_norm > max_grad_norm for r in result.history) / max(1, len(result.history))
    print(
        f"{label}: {len(result.history)} steps, max relative loss difference {worst:.1e}; final weights max |diff| "
        f"{difference:.1e} (max |w| {scale:.3f}; training moved them by up to {moved:.3f}); clipped on "
        f"{clipped:.0%} of steps; transformers took {oracle.seconds:.1f} s"
    )
    return {"worst": worst, "difference": difference, "scale": scale, "moved": moved, "clipped": clipped}

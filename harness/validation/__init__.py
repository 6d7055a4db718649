"""``harness validate``: a run that collects evidence, then small pure checks that judge it.

``validate(config, out_dir)`` returns a ``ValidationOutcome``: every criterion of the research
document's section 9 with its measured value, its threshold and PASS / FAIL / SKIPPED, plus the
evidence it was judged on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import RunConfig
from harness.validation.checks import CHECKS, FAIL, PASS, SKIPPED, Criterion, judge
from harness.validation.collect import EvidenceRun
from harness.validation.evidence import Evidence

__all__ = ["CHECKS", "FAIL", "PASS", "SKIPPED", "Criterion", "Evidence", "ValidationOutcome", "validate"]


@dataclass
class ValidationOutcome:
    config: RunConfig  # as trained (a step cap changes epochs and data)
    out_dir: Path
    evidence: Evidence
    criteria: list[Criterion]
    run: object | None = None  # the harness.recipe.Run, for the report's model and device lines

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if c.status == FAIL]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def validate(
    config: RunConfig,
    out_dir: str | Path,
    *,
    on_progress: Callable[[str], None] | None = None,
    after_training: Callable[[Path], None] | None = None,
    preflight: dict[str, Any] | None = None,
) -> ValidationOutcome:
    """Collect the evidence of one run and judge every criterion on it. On a data-parallel rank other
    than 0 the criteria are left SKIPPED: rank 0 judges and reports. ``preflight`` is the CLI's memory
    prediction on CUDA, reported beside the measured peak."""
    collector = EvidenceRun(
        config, out_dir, on_progress=on_progress, after_training=after_training, preflight=preflight
    )
    evidence = collector.collect()
    criteria = judge(evidence, collector.config.validation) if collector.world.is_main else []
    return ValidationOutcome(collector.config, Path(out_dir), evidence, criteria, collector.run)

"""The promotion gate: may a challenger become champion? A pure decision, no side effects."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline_lib.evaluation.report import level_key


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reasons: tuple[str, ...]

    def summary(self) -> str:
        verdict = "promoted to champion" if self.promote else "kept as challenger"
        return f"{verdict}: " + "; ".join(self.reasons)


def promotion_decision(
    challenger: dict[str, float],
    champion: dict[str, float] | None,
    nominal_level: float = 0.95,
    coverage_tolerance: float = 0.02,
) -> GateDecision:
    """Promote when coverage at ``nominal_level`` is within ``coverage_tolerance`` of nominal
    and CRPS (scaled) is no worse than the champion's on the same holdout.

    ``champion`` holds the current champion's metrics on the challenger's holdout, or
    ``None`` when there is no champion (then coverage alone decides).
    """
    key = f"picp_{level_key(nominal_level)}"
    coverage = challenger[key]
    reasons = []
    coverage_ok = abs(coverage - nominal_level) <= coverage_tolerance + 1e-12
    reasons.append(
        f"PICP{level_key(nominal_level)} {coverage:.3f} {'within' if coverage_ok else 'outside'} "
        f"{nominal_level:.2f} +- {coverage_tolerance:.2f}"
    )
    crps_ok = True
    if champion is not None:
        crps_ok = challenger["crps_scaled"] <= champion["crps_scaled"] + 1e-12
        reasons.append(
            f"CRPS(scaled) {challenger['crps_scaled']:.4f} {'<=' if crps_ok else '>'} champion's "
            f"{champion['crps_scaled']:.4f}"
        )
    else:
        reasons.append("no current champion")
    return GateDecision(promote=coverage_ok and crps_ok, reasons=tuple(reasons))

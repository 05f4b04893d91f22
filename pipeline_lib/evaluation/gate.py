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
    champion_failing: bool = False,
    failing_crps_tolerance: float = 0.05,
) -> GateDecision:
    """Promote when coverage at ``nominal_level`` is within ``coverage_tolerance`` of nominal
    and CRPS (scaled) is no worse than the champion's on the same holdout.

    ``champion`` holds the current champion's metrics on the challenger's holdout, or
    ``None`` when there is no champion (then coverage alone decides).

    ``champion_failing``: the retrain was triggered because the champion's live coverage
    breached the monitoring threshold. The holdout then ends with the breach days, which
    no model trained before them can cover, so an absolute coverage bar would keep the
    failing champion forever. The challenger must instead be at least as well calibrated
    as the champion (coverage error no larger than the champion's plus
    ``coverage_tolerance``) and about as sharp (CRPS within ``failing_crps_tolerance``,
    relative, of the champion's: the two are trained the same way on almost the same data).
    """
    key = f"picp_{level_key(nominal_level)}"
    label = f"PICP{level_key(nominal_level)}"
    coverage = challenger[key]
    error = abs(coverage - nominal_level)
    if champion_failing and champion is not None:
        champion_error = abs(champion[key] - nominal_level)
        coverage_ok = error <= champion_error + coverage_tolerance + 1e-12
        crps_bound = champion["crps_scaled"] * (1.0 + failing_crps_tolerance)
        crps_ok = challenger["crps_scaled"] <= crps_bound + 1e-12
        reasons = (
            "champion failing live coverage: gate relative to it on the same holdout",
            (f"{label} {coverage:.3f} vs champion's {champion[key]:.3f}: error {error:.3f} "
             f"{'<=' if coverage_ok else '>'} {champion_error:.3f} + {coverage_tolerance:.2f}"),
            (f"CRPS(scaled) {challenger['crps_scaled']:.4f} {'<=' if crps_ok else '>'} champion's "
             f"{champion['crps_scaled']:.4f} x {1 + failing_crps_tolerance:.2f}"),
        )
        return GateDecision(promote=coverage_ok and crps_ok, reasons=reasons)
    reasons = []
    coverage_ok = error <= coverage_tolerance + 1e-12
    reasons.append(
        f"{label} {coverage:.3f} {'within' if coverage_ok else 'outside'} "
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

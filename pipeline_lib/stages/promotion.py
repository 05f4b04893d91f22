"""Promotion gate: the current champion scored on the candidate's holdout, then
:func:`pipeline_lib.evaluation.gate.promotion_decision`."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline_lib import registry
from pipeline_lib.config import PipelineConfig
from pipeline_lib.data.validate import Panel
from pipeline_lib.errors import PipelineError
from pipeline_lib.evaluation.gate import GateDecision, promotion_decision
from pipeline_lib.stages.evaluation import Evaluation, evaluate


@dataclass(frozen=True)
class GateOutcome:
    decision: GateDecision
    champion_version: str | None
    champion_metrics: dict | None


def promotion_gate(config: PipelineConfig, panel: Panel, evaluation: Evaluation,
                   champion_failing: bool = False) -> GateOutcome:
    """Evaluate the current champion on the challenger's holdout and decide.

    ``champion_failing``: the monitoring retrains because the champion breached its
    coverage threshold (see :func:`promotion_decision`).

    With no champion yet the first version is promoted whatever the gate says (forecasting
    needs a champion); the gate's verdict is still recorded on the version.
    """
    registry.configure(config.tracking_uri)
    name = config.registry.model_name
    champion = registry.champion(name)
    champion_version = champion.version if champion else None
    champion_metrics = None
    if champion is not None:
        try:
            champion_metrics = evaluate(config, champion.load(), panel).metrics
        except PipelineError as exc:
            decision = GateDecision(False, (f"champion v{champion_version} could not be evaluated on this "
                                            f"holdout ({exc}); promote by hand in the MLflow UI",))
            return GateOutcome(decision, champion_version, None)
    decision = promotion_decision(evaluation.metrics, champion_metrics, config.evaluation.nominal_level,
                                  config.evaluation.coverage_tolerance, champion_failing,
                                  config.monitoring.failing_crps_tolerance)
    if champion_version is None and not decision.promote:
        decision = GateDecision(True, decision.reasons + ("first version: promoted so forecasting can start",))
    return GateOutcome(decision, champion_version, champion_metrics)


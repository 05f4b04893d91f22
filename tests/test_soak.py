"""A short soak: 30 days with random faults and retraining on, through the claim/retrain path
the monitoring flow takes (benchmarks/soak.py runs the long version; its results are in
benchmarks/RESULTS.md)."""

from __future__ import annotations

import pytest
from support import benchmark_module


@pytest.mark.model
def test_faults_leave_the_daily_loop_whole(tmp_path):
    result = benchmark_module("soak").soak(days=30, seed=1, retrain=True, workdir=tmp_path)
    faults = result["faults"]
    # The faults this seed injects did happen (else the test would prove nothing) ...
    assert faults["killed retrain"] >= 1 and faults["killed monitoring run (not rerun)"] >= 1, faults
    assert faults["store down"] >= 1 and faults["killed forecast run"] >= 1 and faults["late actuals"] >= 1, faults
    # ... and the loop absorbed them: every day judged, every breach alerted, the killed
    # retrain retried for the same streak and finished, no claim left behind.
    assert result["violations_clean"] == [] and result["violations_faulty"] == [], result
    assert result["same_streaks_retrained"] and result["rows"]["retrain_events"] >= 1, result
    assert result["retrain_attempts_faulty"] == result["retrains_clean"] + faults["killed retrain"], result

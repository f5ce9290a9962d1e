"""Which policy `auto` plans with: the one a policy file holds (the calibrated cells, or the
per-query predictor where `calibrate --router predictor` wrote it), the rule ladders by name,
or else the shipped one. Apart from router/policy.py because the predictor's policy is built
on that module's types."""

from __future__ import annotations

from pathlib import Path

from apportion.router.policy import (
    POLICY_FILE,
    RULES,
    CalibratedPolicy,
    Policy,
    RulePolicy,
    read_policy_file,
)
from apportion.router.predictor import ROUTER, PredictedPolicy


def policy_from_file(path: Path) -> Policy:
    """The router a policy file holds: the per-query predictor where `calibrate --router
    predictor` wrote it ("router": "predictor"), else the calibrated cells."""
    data = read_policy_file(path)
    if data.get("router") == ROUTER:
        return PredictedPolicy.from_dict(data, where=str(path))
    return CalibratedPolicy.from_dict(data, where=str(path))


def load_policy(path: Path | None = None) -> Policy:
    """The policy at `path` (or the rule ladders for the name "rules"); else the shipped
    calibrated one; else the rule ladders."""
    if path is not None and str(path) == RULES and not path.exists():
        return RulePolicy()
    if path is not None:
        return policy_from_file(path)
    if POLICY_FILE.is_file():
        return policy_from_file(POLICY_FILE)
    return RulePolicy()

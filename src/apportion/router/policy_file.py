"""Which policy `auto` plans with: the one a policy file holds (the calibrated cells, or the
per-query predictor where `calibrate --router predictor` wrote it), the rule ladders or the
shipped predictor by name, or else the shipped cells. Apart from router/policy.py because the
predictor's policy is built on that module's types."""

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

# `--policy predictor`: the per-query predictor shipped beside the cells, calibrated on the
# router-v2 traces (the README's Routing section has the command that rebuilds it).
PREDICTOR = ROUTER
PREDICTOR_FILE = POLICY_FILE.with_name("predictor.json")


def policy_from_file(path: Path) -> Policy:
    """The router a policy file holds: the per-query predictor where `calibrate --router
    predictor` wrote it ("router": "predictor"), else the calibrated cells."""
    data = read_policy_file(path)
    if data.get("router") == ROUTER:
        return PredictedPolicy.from_dict(data, where=str(path))
    return CalibratedPolicy.from_dict(data, where=str(path))


def load_policy(path: Path | None = None) -> Policy:
    """The policy at `path` (the rule ladders for the name "rules", the shipped predictor for
    "predictor"); else the shipped calibrated cells; else the rule ladders."""
    if path is not None and str(path) == RULES and not path.exists():
        return RulePolicy()
    if path is not None and str(path) == PREDICTOR and not path.exists():
        return policy_from_file(PREDICTOR_FILE)
    if path is not None:
        return policy_from_file(path)
    if POLICY_FILE.is_file():
        return policy_from_file(POLICY_FILE)
    return RulePolicy()

"""Retrieval policies: which history each chunk attends to (one module per policy).

registry.py lists them; `make_policy(name, options)` builds one from typed or CLI options.
"""

from vrex_edge.runtime.retrieval.base import PhaseTotals, WindowedCache
from vrex_edge.runtime.retrieval.full import FullKV
from vrex_edge.runtime.retrieval.policy import Policy, PolicySpec
from vrex_edge.runtime.retrieval.registry import POLICIES, get_spec, make_policy, policy_names

__all__ = [
    "POLICIES",
    "FullKV",
    "PhaseTotals",
    "Policy",
    "PolicySpec",
    "WindowedCache",
    "get_spec",
    "make_policy",
    "policy_names",
]

"""`vrex-edge bench`: retrieval policies side by side on real text and on a generated video.

streams.py builds the workloads, policies.py runs every variant in lockstep on the same stream,
report.py writes the Markdown table and the plots, oracle.py is the benchmark-only oracle policy.
"""

from vrex_edge.bench.run import BenchReport, expand_variants, run

__all__ = ["BenchReport", "expand_variants", "run"]

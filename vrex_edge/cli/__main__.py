"""`python -m vrex_edge.cli`: the same as the `vrex-edge` command."""

from vrex_edge.cli import main

main()

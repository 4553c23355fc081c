"""`python -m vrex_edge`: the same as the `vrex-edge` command."""

from vrex_edge.cli import main

if __name__ == "__main__":
    main()

"""Model families. Each module registers itself with `vrex_edge.export.registry.register`."""

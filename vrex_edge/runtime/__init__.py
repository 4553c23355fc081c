"""The edge runtime: capture -> vision -> iterative prefill with host attention -> speak/decide -> generate."""

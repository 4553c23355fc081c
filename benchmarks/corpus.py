"""Long real English text available offline on any Python install: the Python language
reference topics shipped with the standard library (pydoc_data, ~465K characters)."""

from __future__ import annotations


def reference_text() -> str:
    import pydoc_data.topics as topics

    return "\n\n".join(topics.topics[k] for k in sorted(topics.topics))

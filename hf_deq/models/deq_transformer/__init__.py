"""Placeholder: filled by the model family."""

__all__: list[str] = []

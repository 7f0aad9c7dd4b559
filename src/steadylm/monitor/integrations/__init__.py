"""Adapters for other training loops (import the submodule you need; each pulls in its framework)."""

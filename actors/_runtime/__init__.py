"""_runtime layer."""

"""_cluster layer."""

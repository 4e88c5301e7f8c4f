"""_journal layer."""

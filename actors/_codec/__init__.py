"""_codec layer."""

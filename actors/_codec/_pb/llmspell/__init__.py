"""Generated protobuf package (see actors/_codec/_pb/generate.py)."""

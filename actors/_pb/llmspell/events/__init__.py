"""Generated protobuf package (see actors/_pb/generate.py)."""

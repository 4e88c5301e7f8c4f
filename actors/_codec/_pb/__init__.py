"""Generated protobuf code for ``proto/`` — do not edit; run ``make proto``.

``python -m actors._codec._pb.generate`` rewrites ``actors/_codec/_pb/llmspell/``;
``--check`` verifies it against the schema (``tests/test_proto_generated.py``).
"""

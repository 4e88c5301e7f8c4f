"""The codec layer: Event <-> protobuf bytes, and the generated code in ``_pb``."""

from actors._codec.events import decode_event, encode_event
from actors._model.event import install_codec

install_codec(encode_event, decode_event)

"""The encoder as the service runs it without torch: model cards, the weights files' header
and checksums, the int8 graph beside the weights, and ONNX Runtime sessions over it."""

"""Split ONNX export (query_encoder, memory_encoder, read_decoder) with validation."""

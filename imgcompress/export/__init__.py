"""torch -> ONNX export and onnxruntime sessions."""

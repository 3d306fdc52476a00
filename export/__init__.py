"""Export side of the pipeline: checkpoint -> ONNX -> FP16 ONNX -> TensorRT engine."""

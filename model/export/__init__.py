"""Export: the schema-1 ONNX graph, its verification against PyTorch, and Triton's repository."""

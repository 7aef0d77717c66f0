"""FCN segmentation service: ONNX Runtime behind FastAPI; never imports torch or model/."""

"""The schema-1 contract between ``model/`` (which writes ONNX files) and ``service/`` (which
serves them): tensor names and metadata, image decoding, label-map encoding.

numpy and Pillow only, never torch or onnx, so both halves import the same rules.
"""

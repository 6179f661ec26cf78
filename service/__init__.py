"""Online recommendation service: FastAPI over a versioned ONNX + FAISS model bundle.

This package never imports torch; everything it needs comes from the bundle (see `service.core.bundle`).
"""

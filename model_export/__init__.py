"""Offline stage: train the two-tower retrieval model and the ranker, export ONNX + FAISS, write a bundle."""

"""Policies: the interface, the one observation builder, the ONNX policy, rule baselines, shipped models."""

"""Backends behind one Engine interface: torch eager (CPU/CUDA), onnxruntime, TensorRT."""

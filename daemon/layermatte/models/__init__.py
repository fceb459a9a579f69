"""The model side: the catalogue, verified downloads, ONNX graphs, providers and resident sessions."""

"""Tools around the product: synthetic Sentinel-2 scenes and the benchmark."""

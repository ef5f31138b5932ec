"""Inputs: Sentinel-2 products, their metadata, band files and scene classification, read with GDAL."""

"""Output backends: the GeoTIFF writer and its creation-option profiles."""

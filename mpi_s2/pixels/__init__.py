"""Pixels: the radiometric lookup tables (pure numpy)."""

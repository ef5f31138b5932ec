"""Pixels: the radiometric lookup tables and composing a window from its sources (numpy)."""

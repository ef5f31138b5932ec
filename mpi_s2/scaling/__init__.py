"""Scaling studies (strong, weak), their CSV, plot and report, and a projection to cluster scale."""

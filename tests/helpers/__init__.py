"""Helpers shared by the tests: tiny bundles, synthetic data, a real server process."""

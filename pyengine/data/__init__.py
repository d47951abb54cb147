"""Shipped sample data and its procedural generator (synth.py)."""

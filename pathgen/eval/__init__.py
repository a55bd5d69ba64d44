"""Frozen-encoder evaluation: features, weighted kNN (DINO), linear probe, encoder resolution."""

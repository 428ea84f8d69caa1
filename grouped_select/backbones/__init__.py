"""Backbones: networks used as the selector's feature extractor or as the classifier."""

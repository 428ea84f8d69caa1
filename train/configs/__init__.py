"""Training configurations (ml_collections): `default` plus one per paper dataset."""

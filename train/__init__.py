"""Training scripts for avatar4d models (``accelerate launch train/portrait4d.py ...``)."""

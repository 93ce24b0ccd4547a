"""Model families, one package each (configuration, modeling, encoders, conversion); the registry of model
ids is :mod:`avatar.hub.registry`. Import a family's package to use it: ``from avatar.models.portrait4d import
Portrait4D``."""

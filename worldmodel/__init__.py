"""hjepa world models: JEPA encoders, latent dynamics, probes, and the data they learn from."""

__version__ = "0.1.0"

"""cascade-jax: CascadeBERT (cascade exiting of complete BERT models with a difficulty-aware regulariser) in JAX."""

__version__ = "0.1.0"

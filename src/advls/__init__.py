"""advls: label-smoothing defences against adversarial examples."""

__version__ = "0.1.0"

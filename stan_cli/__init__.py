"""stan: offline video anomaly detection with spatio-temporal adversarial networks."""

__version__ = "0.12.0"

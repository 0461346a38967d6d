"""allq: a federated job queue on Trio."""

__version__ = "0.1.0"

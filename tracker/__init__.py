"""tracker: a self-hosted realtime tracking server for small fleets."""

__version__ = "0.1.0"

"""gateway: a reverse-proxy authentication gateway for APIs you cannot change."""

__version__ = "0.1.0"

"""Sora2: text-to-video web application with a resilient API proxy and a one-command dev stack."""

__version__ = "0.1.0"

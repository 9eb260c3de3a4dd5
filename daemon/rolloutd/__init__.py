"""rolloutd: event-driven progressive-delivery controller."""

__version__ = "0.1.0"

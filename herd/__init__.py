"""herd: a testbed for network-wide heavy-hitter detection with the Herd algorithm."""

__version__ = "0.1.0"

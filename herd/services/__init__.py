"""Herd's control plane as real services: the coordinator (gRPC), the local controllers,
the model switch process and the switch drivers, and ``herd replay`` that runs them all.
They only do I/O around ``herd.coordinator``, ``herd.controller`` and ``herd.switch``."""

"""The emulation testbed: topologies, Mininet nodes and the evaluation harness."""

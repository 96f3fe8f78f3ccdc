"""The coordinator's gRPC interface: ``herd.proto`` and the modules generated from it
(``scripts/gen_proto.sh``; committed, not edited)."""

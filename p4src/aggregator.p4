/* aggregator.p4 — forwards everything from the ingress switches to the internal host.
 * Table forwarding maps ingress port -> egress port; its default (set by the harness)
 * sends everything to the host's port. */
#include <core.p4>
#include <v1model.p4>

#include "include/headers.p4"
#include "include/parser.p4"

control AggIngress(inout headers_t hdr, inout metadata_t meta,
                   inout standard_metadata_t standard_metadata) {
    action drop() {
        mark_to_drop(standard_metadata);
    }

    action forward(bit<9> port) {
        standard_metadata.egress_spec = port;
    }

    table forwarding {
        key = { standard_metadata.ingress_port: exact; }
        actions = { forward; drop; }
        default_action = drop();
        size = 64;
    }

    apply {
        forwarding.apply();
    }
}

control AggEgress(inout headers_t hdr, inout metadata_t meta,
                  inout standard_metadata_t standard_metadata) {
    apply { }
}

V1Switch(HerdParser(), HerdNoChecksum(), AggIngress(), AggEgress(), HerdNoChecksum(),
         HerdDeparser()) main;

/* load_balancer.p4 — spreads each flow over two Herd ingress switches (herd/loadbalancer.py).
 *
 * primary   = crc32({SALT_PRIMARY, srcAddr}) mod k
 * secondary = primary + 1 + crc32({SALT_SECONDARY, srcAddr}) mod (k - 1), wrapped to [0, k)
 * Each IPv4 packet takes the primary with probability p: one xorshift32 draw per packet,
 * compared with the threshold in lb_regs (no timestamps). Table ingress_switch maps the
 * chosen switch index to the port it hangs off. Non-IPv4 frames go to switch 0, unmeasured. */
#include <core.p4>
#include <v1model.p4>

#include "include/headers.p4"
#include "include/parser.p4"

/* lb_regs indices, written by the harness: PRNG state, p as a threshold, k */
const bit<32> LB_REG_PRNG        = 0;
const bit<32> LB_REG_P_THRESHOLD = 1;
const bit<32> LB_REG_K           = 2;

/* herd.hashing.SALT_PRIMARY / SALT_SECONDARY */
const bit<8> SALT_PRIMARY   = 0x40;
const bit<8> SALT_SECONDARY = 0x41;

control LbIngress(inout headers_t hdr, inout metadata_t meta,
                  inout standard_metadata_t standard_metadata) {
    register<bit<32>>(3) lb_regs;
    bit<32> switch_index = 0;

    action drop() {
        mark_to_drop(standard_metadata);
    }

    action to_switch(bit<9> port) {
        standard_metadata.egress_spec = port;
    }

    table ingress_switch {
        key = { switch_index: exact; }
        actions = { to_switch; drop; }
        default_action = drop();
        size = 4096;
    }

    /* One xorshift32 draw per IPv4 packet (herd.prng.xorshift32). */
    action next_draw(out bit<32> x) {
        lb_regs.read(x, LB_REG_PRNG);
        x = x ^ (x << 13);
        x = x ^ (x >> 17);
        x = x ^ (x << 5);
        lb_regs.write(LB_REG_PRNG, x);
    }

    apply {
        if (hdr.ipv4.isValid()) {
            bit<32> k;
            bit<32> p_threshold;
            bit<32> primary;
            bit<32> secondary;
            bit<32> draw;
            lb_regs.read(k, LB_REG_K);
            lb_regs.read(p_threshold, LB_REG_P_THRESHOLD);
            hash(primary, HashAlgorithm.crc32, 32w0, { SALT_PRIMARY, hdr.ipv4.srcAddr }, k);
            secondary = primary;
            if (k > 1) {
                bit<32> offset;
                hash(offset, HashAlgorithm.crc32, 32w0, { SALT_SECONDARY, hdr.ipv4.srcAddr },
                     k - 1);
                secondary = primary + 1 + offset;
                if (secondary >= k) {
                    secondary = secondary - k;
                }
            }
            next_draw(draw);
            switch_index = (draw <= p_threshold) ? primary : secondary;
        }
        ingress_switch.apply();
    }
}

control LbEgress(inout headers_t hdr, inout metadata_t meta,
                 inout standard_metadata_t standard_metadata) {
    apply { }
}

V1Switch(HerdParser(), HerdNoChecksum(), LbIngress(), LbEgress(), HerdNoChecksum(),
         HerdDeparser()) main;

/* Parser and deparser shared by herd's P4 programs: Ethernet, up to two VLAN tags, IPv4
 * (with options), and the ports of TCP / UDP / SCTP / UDP-Lite first fragments. Anything
 * else is left unparsed and forwarded untouched. */
#ifndef HERD_PARSER_P4
#define HERD_PARSER_P4

parser HerdParser(packet_in pkt, out headers_t hdr, inout metadata_t meta,
                  inout standard_metadata_t standard_metadata) {
    state start {
        pkt.extract(hdr.ethernet);
        transition select(hdr.ethernet.etherType) {
            ETHERTYPE_VLAN: parse_vlan_outer;
            ETHERTYPE_QINQ: parse_vlan_outer;
            ETHERTYPE_IPV4: parse_ipv4;
            default: accept;
        }
    }
    state parse_vlan_outer {
        pkt.extract(hdr.vlan_outer);
        transition select(hdr.vlan_outer.etherType) {
            ETHERTYPE_VLAN: parse_vlan_inner;
            ETHERTYPE_IPV4: parse_ipv4;
            default: accept;
        }
    }
    state parse_vlan_inner {
        pkt.extract(hdr.vlan_inner);
        transition select(hdr.vlan_inner.etherType) {
            ETHERTYPE_IPV4: parse_ipv4;
            default: accept;
        }
    }
    state parse_ipv4 {
        /* Look before extracting: a frame that is not well-formed IPv4 (version 4, IHL >= 5)
         * is left exactly as it came. */
        transition select(pkt.lookahead<bit<8>>()) {
            0x45: parse_ipv4_header;
            0x46 &&& 0xFE: parse_ipv4_header;   /* IHL 6, 7 */
            0x48 &&& 0xF8: parse_ipv4_header;   /* IHL 8..15 */
            default: accept;
        }
    }
    state parse_ipv4_header {
        pkt.extract(hdr.ipv4);
        transition select(hdr.ipv4.ihl) {
            5: parse_l4;
            default: parse_ipv4_options;
        }
    }
    state parse_ipv4_options {
        pkt.extract(hdr.ipv4_options, ((bit<32>)hdr.ipv4.ihl - 5) * 32);
        transition parse_l4;
    }
    state parse_l4 {
        transition select(hdr.ipv4.fragOffset, hdr.ipv4.protocol) {
            (0, PROTO_TCP): parse_ports;
            (0, PROTO_UDP): parse_ports;
            (0, PROTO_SCTP): parse_ports;
            (0, PROTO_UDPLITE): parse_ports;
            default: accept;
        }
    }
    state parse_ports {
        pkt.extract(hdr.ports);
        meta.srcPort = hdr.ports.srcPort;
        meta.dstPort = hdr.ports.dstPort;
        transition accept;
    }
}

control HerdDeparser(packet_out pkt, in headers_t hdr) {
    apply {
        pkt.emit(hdr.ethernet);
        pkt.emit(hdr.vlan_outer);
        pkt.emit(hdr.vlan_inner);
        pkt.emit(hdr.cpu);
        pkt.emit(hdr.ipv4);
        pkt.emit(hdr.ipv4_options);
        pkt.emit(hdr.ports);
    }
}

/* Nothing here rewrites IPv4, so checksums are neither verified nor recomputed. */
control HerdNoChecksum(inout headers_t hdr, inout metadata_t meta) {
    apply { }
}

#endif

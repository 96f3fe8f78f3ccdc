/* Headers, metadata and constants shared by herd's P4 programs (P4_16, v1model).
 * The CPU header and every constant that the Python model also knows mirror herd/messages.py,
 * herd/switch.py and herd/hashing.py: change them together. */
#ifndef HERD_HEADERS_P4
#define HERD_HEADERS_P4

const bit<16> ETHERTYPE_IPV4     = 0x0800;
const bit<16> ETHERTYPE_VLAN     = 0x8100;
const bit<16> ETHERTYPE_QINQ     = 0x88a8;
const bit<16> ETHERTYPE_HERD_CPU = 0x88B5;  /* herd.messages.ETHERTYPE_HERD_CPU */

const bit<8> PROTO_TCP     = 6;
const bit<8> PROTO_UDP     = 17;
const bit<8> PROTO_SCTP    = 132;
const bit<8> PROTO_UDPLITE = 136;

/* CPU message types: herd.messages.MessageType */
const bit<8> MSG_HELLO    = 1;
const bit<8> MSG_REPORT   = 2;
const bit<8> MSG_OVERFLOW = 3;

const bit<32> CPU_MIRROR_SESSION = 100;   /* clone session the controller points at the CPU port */
const bit<8>  FL_CPU             = 1;     /* the metadata field list a CPU clone carries */
const bit<32> INSTANCE_INGRESS_CLONE = 1; /* standard_metadata.instance_type of an I2E clone */
const bit<32> CPU_FRAME_BYTES    = 36;    /* ethernet (14) + cpu header (22) */

header ethernet_t {
    bit<48> dstAddr;
    bit<48> srcAddr;
    bit<16> etherType;
}

header vlan_t {
    bit<3>  pcp;
    bit<1>  dei;
    bit<12> vid;
    bit<16> etherType;
}

header ipv4_t {
    bit<4>  version;
    bit<4>  ihl;
    bit<8>  diffserv;
    bit<16> totalLen;
    bit<16> identification;
    bit<3>  flags;
    bit<13> fragOffset;
    bit<8>  ttl;
    bit<8>  protocol;
    bit<16> hdrChecksum;
    bit<32> srcAddr;
    bit<32> dstAddr;
}

header ipv4_options_t {
    varbit<320> options;
}

/* The first four bytes of TCP, UDP, SCTP and UDP-Lite: all a flow key needs. */
header l4_ports_t {
    bit<16> srcPort;
    bit<16> dstPort;
}

/* The switch-to-controller message, 22 bytes: herd.messages.CPU_HEADER ("!BIIHHBII").
 * epoch is the switch's epoch when it sent the message. */
header cpu_t {
    bit<8>  msgType;
    bit<32> srcAddr;
    bit<32> dstAddr;
    bit<16> srcPort;
    bit<16> dstPort;
    bit<8>  protocol;
    bit<32> count;
    bit<32> epoch;
}

struct headers_t {
    ethernet_t     ethernet;
    vlan_t         vlan_outer;
    vlan_t         vlan_inner;
    cpu_t          cpu;
    ipv4_t         ipv4;
    ipv4_options_t ipv4_options;
    l4_ports_t     ports;
}

struct metadata_t {
    /* the flow key's ports; 0 when the protocol has none (or for later fragments) */
    bit<16> srcPort;
    bit<16> dstPort;
    /* Herd's group g = (src/8, dst/8) and its entry */
    bit<8>  src8;
    bit<8>  dst8;
    bit<32> tau;
    bit<32> r;
    /* the switch's epoch for this packet (herd_regs[REG_EPOCH] once it is entered) */
    bit<32> epoch;
    /* the coin flip's draw */
    bit<32> draw;
    /* everything an I2E clone needs to become a CPU message in egress */
    @field_list(FL_CPU) bit<8>  cpuMsgType;
    @field_list(FL_CPU) bit<32> cpuSrcAddr;
    @field_list(FL_CPU) bit<32> cpuDstAddr;
    @field_list(FL_CPU) bit<16> cpuSrcPort;
    @field_list(FL_CPU) bit<16> cpuDstPort;
    @field_list(FL_CPU) bit<8>  cpuProtocol;
    @field_list(FL_CPU) bit<32> cpuCount;
    @field_list(FL_CPU) bit<32> cpuEpoch;
}

#endif

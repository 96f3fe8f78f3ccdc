/* herd.p4 — the Herd ingress switch (P4_16, v1model, BMv2 simple_switch).
 *
 * Mirrors herd/switch.py (process_packet) register for register and flip for flip:
 *   0. the packet's epoch, from the switch's clock: floor((now - origin) / W). The first
 *      packet of a new epoch logs where it began and restarts the occupancy; every slot is
 *      tagged with the epoch it was written in, and a slot of an older epoch reads as empty
 *      (the tables empty lazily, with no control-plane round trip)
 *   1. group table keyed by the two /8s; a miss sends one HELLO per group (hello_sent)
 *   2. a hit gives tau_g and r_g (a 32-bit threshold)
 *   3. a multi-stage hash table of (fingerprint, counter, epoch tag, held total, previous
 *      fingerprint, previous held total): the flow's slot counts +1 and its held total +1;
 *      an untracked flow is sampled with probability s and its counter and held total start
 *      at round(1/s); a sampled flow with no room anywhere is an OVERFLOW. A flow taking a
 *      slot of an older epoch first moves the slot's (fingerprint, held total) into its
 *      previous words if the slot was written in the epoch just before, else zeros them:
 *      confirm's pull reads an epoch's final held totals while the next epoch is counted
 *   4. a counter reaching tau_g restarts at 0 (the held total does not) and is REPORTed
 *      with probability r_g
 *   5. forward (table forwarding: ingress port -> egress port)
 * CPU messages are I2E clones to CPU_MIRROR_SESSION, turned into ethernet + cpu_t in egress;
 * they carry the switch's epoch.
 * The stage sizes are compile-time constants (p4c -DSTAGE0_SIZE=... etc.), default 4096,
 * 2048, 1024 as herd.params.DEFAULT_STAGES. */
#include <core.p4>
#include <v1model.p4>

#include "include/headers.p4"
#include "include/parser.p4"

#ifndef STAGE0_SIZE
#define STAGE0_SIZE 4096
#endif
#ifndef STAGE1_SIZE
#define STAGE1_SIZE 2048
#endif
#ifndef STAGE2_SIZE
#define STAGE2_SIZE 1024
#endif
#define TOTAL_SLOTS (STAGE0_SIZE + STAGE1_SIZE + STAGE2_SIZE)

/* herd_regs indices: herd.switch.REG_* */
const bit<32> REG_PRNG             = 0;
const bit<32> REG_SAMPLE_THRESHOLD = 1;
const bit<32> REG_HOLD_START       = 2;
const bit<32> REG_OCCUPIED         = 3;
const bit<32> REG_PEAK_OCCUPIED    = 4;
const bit<32> REG_HELLOS           = 5;
const bit<32> REG_REPORTS          = 6;
const bit<32> REG_OVERFLOWS        = 7;
const bit<32> REG_PACKETS          = 8;  /* IPv4 packets measured: the controllers' clock */
const bit<32> REG_EPOCH            = 9;  /* the switch's current epoch */
const bit<32> REG_EPOCH_US         = 10; /* epoch length W in microseconds; 0: one epoch */
const bit<32> N_REGS               = 11;

/* herd_epoch_log entries: herd.switch.EPOCH_LOG (epoch e is logged at e mod EPOCH_LOG) */
const bit<32> EPOCH_LOG = 256;

/* hash salts: herd.hashing.SALT_* */
const bit<8> SALT_FINGERPRINT = 0x00;
const bit<8> SALT_STAGE0      = 0x01;
const bit<8> SALT_STAGE1      = 0x02;
const bit<8> SALT_STAGE2      = 0x03;

/* floor(n / d) mod 2^32 for d != 0, as herd.switch.clock_epoch divides. p4c's BMv2 back end
 * only divides at compile time ("could not evaluate expression at compilation time"), so this
 * is restoring long division: one step per bit of n, most significant first, bringing it down
 * into the remainder and taking d out when it fits. Exact for every n and d. */
#define DIVIDE_STEP(i)                              \
    r = r << 1 | (bit<64>)n[i:i];                   \
    q = q << 1;                                     \
    if (r >= (bit<64>)d) {                          \
        r = r - (bit<64>)d;                         \
        q = q | 1;                                  \
    }

bit<32> divide(in bit<48> n, in bit<32> d) {
    bit<64> r = 0;  /* the remainder so far, < d before each step */
    bit<32> q = 0;  /* the quotient's low 32 bits so far */
    DIVIDE_STEP(47) DIVIDE_STEP(46) DIVIDE_STEP(45) DIVIDE_STEP(44)
    DIVIDE_STEP(43) DIVIDE_STEP(42) DIVIDE_STEP(41) DIVIDE_STEP(40)
    DIVIDE_STEP(39) DIVIDE_STEP(38) DIVIDE_STEP(37) DIVIDE_STEP(36)
    DIVIDE_STEP(35) DIVIDE_STEP(34) DIVIDE_STEP(33) DIVIDE_STEP(32)
    DIVIDE_STEP(31) DIVIDE_STEP(30) DIVIDE_STEP(29) DIVIDE_STEP(28)
    DIVIDE_STEP(27) DIVIDE_STEP(26) DIVIDE_STEP(25) DIVIDE_STEP(24)
    DIVIDE_STEP(23) DIVIDE_STEP(22) DIVIDE_STEP(21) DIVIDE_STEP(20)
    DIVIDE_STEP(19) DIVIDE_STEP(18) DIVIDE_STEP(17) DIVIDE_STEP(16)
    DIVIDE_STEP(15) DIVIDE_STEP(14) DIVIDE_STEP(13) DIVIDE_STEP(12)
    DIVIDE_STEP(11) DIVIDE_STEP(10) DIVIDE_STEP(9)  DIVIDE_STEP(8)
    DIVIDE_STEP(7)  DIVIDE_STEP(6)  DIVIDE_STEP(5)  DIVIDE_STEP(4)
    DIVIDE_STEP(3)  DIVIDE_STEP(2)  DIVIDE_STEP(1)  DIVIDE_STEP(0)
    return q;
}

control HerdIngress(inout headers_t hdr, inout metadata_t meta,
                    inout standard_metadata_t standard_metadata) {
    register<bit<32>>(N_REGS) herd_regs;
    register<bit<32>>(TOTAL_SLOTS) stage_fp;
    register<bit<32>>(TOTAL_SLOTS) stage_count;
    register<bit<32>>(TOTAL_SLOTS) stage_epoch;   /* the epoch each slot was written in */
    /* Confirm: each slot's held total (round(1/s) at sampling, +1 per packet, never
     * restarted at tau_g), and the fingerprint and held total the slot had at the end of the
     * epoch before stage_epoch (0: none), kept for the control plane's pull. */
    register<bit<32>>(TOTAL_SLOTS) stage_total;
    register<bit<32>>(TOTAL_SLOTS) stage_prev_fp;
    register<bit<32>>(TOTAL_SLOTS) stage_prev_total;
    register<bit<1>>(65536) hello_sent;
    /* When epoch 0 began, in the switch's clock (ingress_global_timestamp: microseconds
     * since the switch started); the controller converts its wall-clock origin. */
    register<bit<48>>(1) herd_epoch_origin;
    /* Where each epoch began: epoch << 32 | the packets measured before it. */
    register<bit<64>>(EPOCH_LOG) herd_epoch_log;

    bit<32> fp;
    bit<32> slot0;
    bit<32> slot1;
    bit<32> slot2;
    bit<32> probed_fp;     /* the last probed slot: its fingerprint and epoch tag */
    bit<32> probed_epoch;

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

    action set_group_params(bit<32> tau, bit<32> r) {
        meta.tau = tau;
        meta.r = r;
    }

    table group_table {
        key = {
            meta.src8: exact;
            meta.dst8: exact;
        }
        actions = { set_group_params; NoAction; }
        default_action = NoAction();
        size = 65536;
    }

    /* Advance the xorshift32 register (herd.prng.xorshift32): one draw per coin flip. */
    action next_draw() {
        bit<32> x;
        herd_regs.read(x, REG_PRNG);
        x = x ^ (x << 13);
        x = x ^ (x >> 17);
        x = x ^ (x << 5);
        herd_regs.write(REG_PRNG, x);
        meta.draw = x;
    }

    action count_event(bit<32> reg) {
        bit<32> n;
        herd_regs.read(n, reg);
        herd_regs.write(reg, n + 1);
    }

    action send_to_cpu(bit<8> msg_type, bit<32> count) {
        meta.cpuMsgType = msg_type;
        meta.cpuSrcAddr = hdr.ipv4.srcAddr;
        meta.cpuDstAddr = hdr.ipv4.dstAddr;
        meta.cpuSrcPort = meta.srcPort;
        meta.cpuDstPort = meta.dstPort;
        meta.cpuProtocol = hdr.ipv4.protocol;
        meta.cpuCount = count;
        meta.cpuEpoch = meta.epoch;
        clone_preserving_field_list(CloneType.I2E, CPU_MIRROR_SESSION, FL_CPU);
    }

    action hash_flow() {
        hash(fp, HashAlgorithm.crc32, 32w1,
             { SALT_FINGERPRINT, hdr.ipv4.srcAddr, hdr.ipv4.dstAddr, meta.srcPort, meta.dstPort,
               hdr.ipv4.protocol }, 32w0xFFFFFFFF);
        hash(slot0, HashAlgorithm.crc32, 32w0,
             { SALT_STAGE0, hdr.ipv4.srcAddr, hdr.ipv4.dstAddr, meta.srcPort, meta.dstPort,
               hdr.ipv4.protocol }, (bit<32>)STAGE0_SIZE);
        hash(slot1, HashAlgorithm.crc32, (bit<32>)STAGE0_SIZE,
             { SALT_STAGE1, hdr.ipv4.srcAddr, hdr.ipv4.dstAddr, meta.srcPort, meta.dstPort,
               hdr.ipv4.protocol }, (bit<32>)STAGE1_SIZE);
        hash(slot2, HashAlgorithm.crc32, (bit<32>)(STAGE0_SIZE + STAGE1_SIZE),
             { SALT_STAGE2, hdr.ipv4.srcAddr, hdr.ipv4.dstAddr, meta.srcPort, meta.dstPort,
               hdr.ipv4.protocol }, (bit<32>)STAGE2_SIZE);
    }

    /* The first packet of a new epoch: log where it began, restart the occupancy (the peak
     * stays). Slots of older epochs read as empty from now on. */
    action start_epoch(bit<32> epoch) {
        bit<32> packets;
        herd_regs.read(packets, REG_PACKETS);
        herd_epoch_log.write(epoch % EPOCH_LOG, epoch ++ packets);
        herd_regs.write(REG_EPOCH, epoch);
        herd_regs.write(REG_OCCUPIED, 0);
        meta.epoch = epoch;
    }

    /* One slot of the stage walk: its fingerprint and the epoch it was written in. */
    action probe(bit<32> slot) {
        stage_fp.read(probed_fp, slot);
        stage_epoch.read(probed_epoch, slot);
    }

    /* A matched packet: +1 on the flow's held total. */
    action count_held(bit<32> slot) {
        bit<32> total;
        stage_total.read(total, slot);
        stage_total.write(slot, total + 1);
    }

    /* Taking a slot last written in the epoch before this one: its fingerprint and held
     * total become the slot's previous words (probed_fp is the slot's, from the walk). */
    action keep_previous(bit<32> slot) {
        bit<32> total;
        stage_total.read(total, slot);
        stage_prev_fp.write(slot, probed_fp);
        stage_prev_total.write(slot, total);
    }

    /* Taking a slot last written two or more epochs ago: it held nothing last epoch. */
    action clear_previous(bit<32> slot) {
        stage_prev_fp.write(slot, 0);
        stage_prev_total.write(slot, 0);
    }

    /* Sample-and-hold: the flow takes the slot, its counter and held total start at
     * round(1/s) for the packets missed before (the counter is written in step 4). */
    action claim(bit<32> slot, bit<32> hold_start) {
        stage_fp.write(slot, fp);
        stage_epoch.write(slot, meta.epoch);
        stage_total.write(slot, hold_start);
    }

    apply {
        forwarding.apply();
        if (!hdr.ipv4.isValid()) {
            return;  /* non-IPv4 frames are forwarded and not measured */
        }

        /* 0. The epoch of the switch's clock (herd.switch.clock_epoch): floor((now - origin)
         *    / W), 0 before the origin or when epochs are off (W = 0); the switch never goes
         *    back an epoch. A packet before the end of the current epoch e (elapsed <
         *    (e + 1) * W, nearly every packet) cannot be in a later one: only a packet past
         *    it pays for the division. */
        bit<32> epoch_us;
        bit<48> origin;
        bit<48> now = standard_metadata.ingress_global_timestamp;
        herd_regs.read(epoch_us, REG_EPOCH_US);
        herd_epoch_origin.read(origin, 0);
        herd_regs.read(meta.epoch, REG_EPOCH);
        if (epoch_us != 0 && now >= origin) {
            bit<48> elapsed = now - origin;
            if ((bit<64>)elapsed >= ((bit<64>)meta.epoch + 1) * (bit<64>)epoch_us) {
                bit<32> epoch = divide(elapsed, epoch_us);
                if (epoch > meta.epoch) {
                    start_epoch(epoch);
                }
            }
        }
        count_event(REG_PACKETS);
        meta.src8 = hdr.ipv4.srcAddr[31:24];
        meta.dst8 = hdr.ipv4.dstAddr[31:24];

        /* 1. Group table; a miss sends one hello per group and the packet is not counted. */
        if (!group_table.apply().hit) {
            bit<1> sent;
            bit<32> g = (bit<32>)(meta.src8 ++ meta.dst8);
            hello_sent.read(sent, g);
            if (sent == 0) {
                hello_sent.write(g, 1);
                count_event(REG_HELLOS);
                send_to_cpu(MSG_HELLO, 0);
            }
            return;
        }

        /* 3. Walk the stages: this flow's slot, or the first empty one. A slot is empty when
         *    it was written in an older epoch or holds no fingerprint. */
        hash_flow();
        bit<32> slot = 0;
        bit<1> matched = 0;
        bit<1> has_empty = 0;
        probe(slot0);
        if (probed_epoch != meta.epoch || probed_fp == 0) {
            slot = slot0; has_empty = 1;
        } else if (probed_fp == fp) {
            slot = slot0; matched = 1;
        } else {
            probe(slot1);
            if (probed_epoch != meta.epoch || probed_fp == 0) {
                slot = slot1; has_empty = 1;
            } else if (probed_fp == fp) {
                slot = slot1; matched = 1;
            } else {
                probe(slot2);
                if (probed_epoch != meta.epoch || probed_fp == 0) {
                    slot = slot2; has_empty = 1;
                } else if (probed_fp == fp) {
                    slot = slot2; matched = 1;
                }
            }
        }

        bit<32> c = 0;
        bit<1> tracked = matched;
        if (matched == 1) {
            stage_count.read(c, slot);
            c = c + 1;
            count_held(slot);
        } else {
            /* sampled with probability s; a sampled flow with no room is an overflow */
            bit<32> sample_threshold;
            herd_regs.read(sample_threshold, REG_SAMPLE_THRESHOLD);
            next_draw();
            if (meta.draw <= sample_threshold) {
                if (has_empty == 0) {
                    count_event(REG_OVERFLOWS);
                    send_to_cpu(MSG_OVERFLOW, 0);
                } else {
                    /* A slot of an older epoch: keep what it held in the last one, for a
                     * pull (before the new fingerprint and tag: a reader that sees the new
                     * tag finds the previous words written). tag + 1 == epoch, without
                     * wrapping at 2^32. */
                    if (probed_epoch != meta.epoch) {
                        if (meta.epoch != 0 && probed_epoch == meta.epoch - 1) {
                            keep_previous(slot);
                        } else {
                            clear_previous(slot);
                        }
                    }
                    herd_regs.read(c, REG_HOLD_START);
                    claim(slot, c);
                    tracked = 1;
                    bit<32> occupied;
                    bit<32> peak;
                    herd_regs.read(occupied, REG_OCCUPIED);
                    herd_regs.read(peak, REG_PEAK_OCCUPIED);
                    occupied = occupied + 1;
                    herd_regs.write(REG_OCCUPIED, occupied);
                    if (occupied > peak) {
                        herd_regs.write(REG_PEAK_OCCUPIED, occupied);
                    }
                }
            }
        }

        /* 4. A mole reaching tau_g becomes a mule: restart it, report with probability r_g. */
        if (tracked == 1) {
            if (c >= meta.tau) {
                stage_count.write(slot, 0);
                next_draw();
                if (meta.draw <= meta.r) {
                    count_event(REG_REPORTS);
                    send_to_cpu(MSG_REPORT, c);
                }
            } else {
                stage_count.write(slot, c);
            }
        }
    }
}

control HerdEgress(inout headers_t hdr, inout metadata_t meta,
                   inout standard_metadata_t standard_metadata) {
    /* A clone to the CPU port leaves as ethernet + cpu_t and nothing else. */
    action to_cpu_frame() {
        hdr.ethernet.setValid();
        hdr.ethernet.etherType = ETHERTYPE_HERD_CPU;
        hdr.vlan_outer.setInvalid();
        hdr.vlan_inner.setInvalid();
        hdr.ipv4.setInvalid();
        hdr.ipv4_options.setInvalid();
        hdr.ports.setInvalid();
        hdr.cpu.setValid();
        hdr.cpu.msgType = meta.cpuMsgType;
        hdr.cpu.srcAddr = meta.cpuSrcAddr;
        hdr.cpu.dstAddr = meta.cpuDstAddr;
        hdr.cpu.srcPort = meta.cpuSrcPort;
        hdr.cpu.dstPort = meta.cpuDstPort;
        hdr.cpu.protocol = meta.cpuProtocol;
        hdr.cpu.count = meta.cpuCount;
        hdr.cpu.epoch = meta.cpuEpoch;
        truncate(CPU_FRAME_BYTES);
    }

    apply {
        if (standard_metadata.instance_type == INSTANCE_INGRESS_CLONE) {
            to_cpu_frame();
        }
    }
}

V1Switch(HerdParser(), HerdNoChecksum(), HerdIngress(), HerdEgress(), HerdNoChecksum(),
         HerdDeparser()) main;

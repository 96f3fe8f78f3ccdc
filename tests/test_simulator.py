"""The simulator on hand-made captures (real pcap bytes), against outcomes worked out by hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_capture

from herd.delays import EntryWrite, delays_csv, l_g_of_threshold, read_delays
from herd.errors import HerdInputError
from herd.evaluate import PreparedTrace, simulate
from herd.params import Params
from herd.prng import draws, probability_threshold, switch_seed
from herd.trace import load_trace

A = ("10.0.0.1", "20.0.0.2", 1234, 80, "tcp")
B = ("10.0.0.3", "20.0.0.4", 5555, 53, "udp")  # same group (10/8 -> 20/8) as A


def one_switch(**kw) -> Params:
    base = dict(k=1, p=1.0, s=1.0, epsilon=0.5, T=10, R=2, stages=(64, 32, 16))
    base.update(kw)
    return Params(**base)


def capture(tmp_path: Path, flows: list[tuple], gap_s: float = 0.001) -> PreparedTrace:
    packets = [(1000.0 + i * gap_s, *f) for i, f in enumerate(flows)]
    return PreparedTrace(load_trace(write_capture(tmp_path / "t.pcap", packets)))


def test_one_flow_one_switch_by_hand(tmp_path: Path) -> None:
    """s = 1, l_g = 1, epsilon = 0.5, T = 10: tau = 5, r = 1, hold start 1.
    Packet 1 is the hello (not counted); packets 2..6 count 1..5 -> report at 6, then at
    11, 16, 21. R = 2: an elephant at packet 11."""
    prep = capture(tmp_path, [A] * 21)
    r = simulate(prep, one_switch())
    m = r.metrics
    assert (m["hellos"], m["reports"], m["overflows"]) == (1, 4, 0)
    assert (m["heavy_hitters"], m["detected"], m["f1"]) == (1, 1, 1.0)
    assert m["max_states"] == 1 and m["max_messages_per_switch"] == 5
    assert int(r.detect_ts[0]) == prep.trace.ts_ns[10]  # the 11th packet
    # It reached T = 10 packets at packet 10, and was detected one packet (1 ms) later.
    assert m["detection_delay_ms_p50"] == pytest.approx(1.0)


def test_control_loop_delay_leaves_packets_uncounted(tmp_path: Path) -> None:
    """Packets 1 ms apart, delay 2.5 ms: the entry takes effect before packet 4 (t = 3 ms),
    so counting starts there: 1 at #4 ... 5 at #8 -> reports at #8, #13, #18."""
    prep = capture(tmp_path, [A] * 21)
    r = simulate(prep, one_switch(delay_ms=2.5))
    assert r.metrics["reports"] == 3
    assert int(r.detect_ts[0]) == prep.trace.ts_ns[12]


def test_overflow_ignore_and_reset(tmp_path: Path) -> None:
    """One slot, flows A and B alternating (A first, same group), s = 1, tau = 5:
    #1 A hello; #2 B takes the slot; every later A overflows.
    ignore: B counts 1..5 at #2,4,6,8,10 -> report at #10, again 1..5 at #12..20 -> report
    at #20; A overflows at #3,5,...,19 (9 times).
    reset (delay 0): each A overflow clears the slot, so B restarts at 1 and never reports."""
    prep = capture(tmp_path, [A, B] * 10)
    ignore = simulate(prep, one_switch(stages=(1,), overflow_policy="ignore")).metrics
    assert (ignore["overflows"], ignore["reports"], ignore["table_resets"]) == (9, 2, 0)
    reset = simulate(prep, one_switch(stages=(1,), overflow_policy="reset")).metrics
    assert (reset["overflows"], reset["reports"], reset["table_resets"]) == (9, 0, 9)


def test_l_g_doubling_reaches_the_switches(tmp_path: Path) -> None:
    """Four ingress files, one per switch, 3 packets each of one group. The first packets are
    the hellos; l_g ends at 4, so tau = ceil(0.5*8/4) = 1 and r = 1/4 on every switch. Each
    switch then draws: a sampling flip (s = 1, fires), and a report flip with r = 1/4 for each
    of its two counted packets."""
    from herd.trace import load_ingress_traces

    paths = []
    for sw in range(4):
        pk = [(1000.0 + sw * 0.01 + i * 0.1, f"10.0.{sw}.1", "20.0.0.2", 1000 + sw, 80, "tcp")
              for i in range(3)]
        paths.append(write_capture(tmp_path / f"sw{sw}.pcap", pk))
    prep = PreparedTrace(load_ingress_traces(paths))
    r = simulate(prep, one_switch(k=4, T=8, R=1))
    m = r.metrics
    assert m["hellos"] == 4 and m["groups"] == 1
    # Installs: sw0 l=1; sw1 -> l=2 pushed to 0,1; sw2 gets 2; sw3 -> l=4 pushed to 0..3.
    assert m["table_writes"] == 1 + 2 + 1 + 4
    assert m["l_g_pushes"] == 1 + 3
    quarter = probability_threshold(0.25)
    expected = [sum(d <= quarter for d in draws(switch_seed(1, sw), 3)[1:]) for sw in range(4)]
    assert m["messages_per_switch"] == [1 + e for e in expected]
    assert m["reports"] == sum(expected)


def test_identical_seeds_identical_output_and_seeds_matter(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    flows = [(f"{a}.1.1.1", f"{b}.2.2.2", 1000 + i, 80, "tcp")
             for i, (a, b) in enumerate(rng.integers(1, 50, (40, 2)))]
    seq = [flows[i] for i in rng.zipf(1.5, 3000) % len(flows)]
    prep = capture(tmp_path, seq)
    params = Params(s=0.3, epsilon=0.2, percentile=90, k=4)
    one, two = simulate(prep, params).to_dict(), simulate(prep, params).to_dict()
    for d in (one, two):
        d.pop("seconds"), d.pop("packets_per_second")
    assert one == two
    other = simulate(prep, params.with_(seed=2)).to_dict()
    assert (other["reports"], other["max_states"]) != (one["reports"], one["max_states"])


# ------------------------------------------------------------- measured delays (herd.delays)


def test_measured_entry_time_replaces_the_constant_delay(tmp_path: Path) -> None:
    """The run's entry for A's group took effect at packet #4 (0-based 3): exactly what a
    constant 2.5 ms delay gives (counting starts at #4), whatever delay_ms says."""
    prep = capture(tmp_path, [A] * 21)
    g = (10 << 8) | 20
    writes = [EntryWrite(0, g, 0, 1, 3, 2.5)]
    measured = simulate(prep, one_switch(delay_ms=9.0), writes)
    constant = simulate(prep, one_switch(delay_ms=2.5))
    assert measured.metrics["reports"] == constant.metrics["reports"] == 3
    assert int(measured.detect_ts[0]) == int(constant.detect_ts[0])
    assert measured.metrics["measured_delays"] == 1
    assert measured.metrics["measured_delays_mismatched"] == 0
    # An entry that never came: nothing counted, nothing reported.
    never = simulate(prep, one_switch(), [EntryWrite(0, g, 0, 0, -1)])
    assert never.metrics["reports"] == 0 and never.metrics["detected"] == 0
    # A row whose hello packet is of another group is not used, and counted.
    other = simulate(prep, one_switch(), [EntryWrite(0, g + 1, 0, 1, 3)])
    assert other.metrics["measured_delays_mismatched"] == 1
    assert other.metrics["reports"] == simulate(prep, one_switch()).metrics["reports"]


C = ("10.0.0.4", "20.0.0.9", 7, 7, "udp")  # same group as A; the other switch when k = 2


def two_switches(tmp_path: Path, flows: list[tuple]) -> tuple[PreparedTrace, Params, int, int]:
    """The capture, k = 2 parameters, and the switches of A and C (never the same)."""
    prep = capture(tmp_path, flows)
    two = one_switch(k=2, p=1.0)
    ingress = prep.ingress(2, 1.0, two.seed)
    sw_a = int(ingress[flows.index(A)])
    sw_c = int(ingress[flows.index(C)])
    assert sw_a != sw_c
    return prep, two, sw_a, sw_c


def test_measured_push_waits_for_the_member_to_reach_l_g(tmp_path: Path) -> None:
    """Two switches, one group: A's switch says hello at #1 (l_g 1), C's switch at #2 (l_g 2,
    pushed to A's switch). Entries in effect at each switch's next packet are exactly delay
    0; the same file with A's switch reaching l_g 2 only at its packet 5 counts A's packets
    2..5 with tau(1) = 5 instead of tau(2) = 3, and so reports differently."""
    prep, two, sw_a, sw_c = two_switches(tmp_path, [A, C] + [A] * 19)
    g = (10 << 8) | 20
    early = [EntryWrite(sw_a, g, 0, 1, 1), EntryWrite(sw_a, g, 0, 2, 1),
             EntryWrite(sw_c, g, 0, 2, 1)]
    late = [EntryWrite(sw_a, g, 0, 1, 1), EntryWrite(sw_a, g, 0, 2, 5),
            EntryWrite(sw_c, g, 0, 2, 1)]
    zero = simulate(prep, two)
    r_early = simulate(prep, two.with_(delay_ms=50.0), early)
    r_late = simulate(prep, two, late)
    assert r_early.metrics["measured_delays_mismatched"] == 0
    assert r_early.metrics["reports"] == zero.metrics["reports"]
    assert list(r_early.detect_ts) == list(zero.detect_ts)
    assert (r_late.metrics["reports"], list(r_late.detect_ts)) != \
        (r_early.metrics["reports"], list(r_early.detect_ts))


def test_l_g_of_threshold_inverts_r_g() -> None:
    for l_g in range(1, 65):
        assert l_g_of_threshold(probability_threshold(1.0 / l_g)) == l_g
    assert l_g_of_threshold(0) == 0 and l_g_of_threshold(probability_threshold(0.7)) == 0


def test_delays_file_round_trip_and_bad_rows(tmp_path: Path) -> None:
    rows = [EntryWrite(0, 2580, 0, 1, 15, 37.9), EntryWrite(3, 7, 2, 0, -1)]
    path = tmp_path / "d.csv"
    path.write_text(delays_csv(rows))
    assert read_delays(path) == rows
    path.write_text("switch,group,hello_packet,l_g,packet,latency_ms\n0,70000,0,1,3,\n")
    with pytest.raises(HerdInputError, match=r"d.csv: line 2: value out of range"):
        read_delays(path)
    path.write_text("switch,group\n0,1\n")
    with pytest.raises(HerdInputError, match="not a delays file"):
        read_delays(path)


def test_measured_entries_follow_the_runs_steps(tmp_path: Path) -> None:
    """C's switch says hello first in the trace, A's second, so the simulator alone would
    answer A with l_g 2. The run's coordinator saw A first: A's entry was l_g 1 from A's
    packet 1 and 2 from packet 5. The simulation follows the run's entries: A counts from
    packet 1, which it does not when the run's entry came only at packet 5."""
    prep, two, sw_a, sw_c = two_switches(tmp_path, [C, A] + [A] * 19)
    g = (10 << 8) | 20
    stepped = [EntryWrite(sw_a, g, 0, 1, 1), EntryWrite(sw_a, g, 0, 2, 5),
               EntryWrite(sw_c, g, 0, 1, 1), EntryWrite(sw_c, g, 0, 2, 1)]
    direct = [EntryWrite(sw_a, g, 0, 2, 5), EntryWrite(sw_c, g, 0, 1, 1),
              EntryWrite(sw_c, g, 0, 2, 1)]
    r_stepped = simulate(prep, two, stepped)
    r_direct = simulate(prep, two, direct)
    # C sends one packet: its entry (due at its packet 1) never takes effect in the trace.
    assert r_stepped.metrics["table_writes"] == 2  # A: 1, then 2
    assert r_direct.metrics["table_writes"] == 1  # A: 2 only
    assert int(r_stepped.detect_ts.min()) < int(r_direct.detect_ts.min())  # A, the elephant

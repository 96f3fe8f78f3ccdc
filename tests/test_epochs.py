"""Epochs (DESIGN.md "Epochs") on hand-made captures: the epoch of every packet, the switch's
lazy reset, (flow, epoch) ground truth and scoring, the edge cases, and the compiled
simulator against the plain-Python reference, whatever the chunk size."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import write_capture

from herd.cli import main
from herd.errors import HerdInputError
from herd.evaluate import PreparedTrace, simulate
from herd.groundtruth import (
    count_pairs,
    epoch_info,
    packet_epochs,
    pair_keys,
    threshold,
    threshold_from_histogram,
)
from herd.params import Params
from herd.reference import simulate_reference
from herd.switch import Switch, SwitchConfig
from herd.trace import Trace, load_trace

A = ("10.0.0.1", "20.0.0.2", 1234, 80, "tcp")
B = ("11.0.0.3", "21.0.0.4", 5555, 53, "udp")
T0 = 1000.0  # seconds: the captures' first timestamp


def one_switch(**kw) -> Params:
    base = dict(k=1, p=1.0, s=1.0, epsilon=0.5, T=10, R=2, stages=(64, 32, 16))
    base.update(kw)
    return Params(**base)


def capture(tmp_path: Path, packets: list[tuple]) -> PreparedTrace:
    """packets: (seconds after T0, flow)."""
    return PreparedTrace(load_trace(write_capture(
        tmp_path / "t.pcap", [(T0 + t, *f) for t, f in packets])))


def epochs_of(prep: PreparedTrace, epoch_ms: float) -> list[int]:
    t = prep.trace
    return packet_epochs(t.ts_ns, t.first_ts, int(round(epoch_ms * 1e6))).tolist()


# ------------------------------------------------------------------ the epoch of a packet


def test_a_packet_exactly_at_ts_first_plus_w_is_in_epoch_1(tmp_path: Path) -> None:
    prep = capture(tmp_path, [(0.0, A), (0.000999, A), (0.001, A), (0.001999, A), (0.002, A)])
    assert epochs_of(prep, 1.0) == [0, 0, 1, 1, 2]
    assert prep.epoch_counts(1.0).epoch_packets.tolist() == [2, 2, 1]


def test_empty_epochs_and_a_gap_spanning_several(tmp_path: Path) -> None:
    prep = capture(tmp_path, [(0.0, A), (0.0005, B), (0.0035, A)])
    assert epochs_of(prep, 1.0) == [0, 0, 3]
    counts = prep.epoch_counts(1.0)
    assert counts.epoch_packets.tolist() == [2, 0, 0, 1]
    assert counts.epoch_pairs.tolist() == [2, 0, 0, 1]
    r = simulate(prep, one_switch(epoch_ms=1.0, T=1, R=1))
    assert r.metrics["epochs"] == 4
    assert [row["packets"] for row in r.per_epoch] == [2, 0, 0, 1]
    empty = r.per_epoch[1]
    assert (empty["heavy_hitters"], empty["detected"], empty["messages"]) == (0, 0, 0)


def test_timestamps_going_back_stay_in_the_current_epoch(tmp_path: Path) -> None:
    prep = capture(tmp_path, [(0.0, A), (0.0021, A), (0.0015, B), (0.0005, A), (0.0031, B)])
    assert epochs_of(prep, 1.0) == [0, 2, 2, 2, 3]
    # Before the first packet too: a capture may start with a late timestamp.
    early = capture(tmp_path, [(0.002, A), (0.0, B), (0.0031, A)])
    assert epochs_of(early, 1.0) == [0, 0, 1]


def test_w_longer_than_the_trace_equals_one_epoch(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    flows = [(f"{a}.1.1.1", f"{b}.2.2.2", 1000 + i, 80, "tcp")
             for i, (a, b) in enumerate(rng.integers(1, 30, (30, 2)))]
    seq = [(i * 1e-4, flows[j]) for i, j in enumerate(rng.zipf(1.4, 2000) % len(flows))]
    prep = capture(tmp_path, seq)
    params = Params(s=0.3, epsilon=0.2, percentile=90, k=3)
    one = simulate(prep, params).to_dict()
    long = simulate(prep, params.with_(epoch_ms=10_000)).to_dict()
    for d in (one, long):
        for key in ("seconds", "packets_per_second", "params", "epoch_ms"):
            d.pop(key)
    assert one == long
    assert one["epochs"] == 1 and len(one["per_epoch"]) == 1


def test_a_one_packet_trace(tmp_path: Path) -> None:
    prep = capture(tmp_path, [(0.0, A)])
    r = simulate(prep, Params(epoch_ms=5))
    assert (r.T, r.metrics["epochs"], r.metrics["hellos"], r.metrics["reports"]) == (1, 1, 1, 0)
    assert r.metrics["heavy_hitters"] == 1 and r.metrics["recall"] == 0.0


def test_bad_epoch_lengths_are_one_line_errors(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    trace = write_capture(tmp_path / "t.pcap", [(T0, *A)])
    for bad in ("-5", "abc", "nan"):
        assert _exit_code(["simulate", "--trace", str(trace), "--epoch-ms", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "--epoch-ms" in err and bad in err, err
    assert _exit_code(["trace", "info", str(trace), "--epoch-ms", "-1"]) == 2
    with pytest.raises(HerdInputError, match="epoch_ms"):
        Params(epoch_ms=-1.0)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"epoch_ms": "soon"}))
    assert _exit_code(["simulate", "--trace", str(trace), "--params", str(params)]) == 2
    assert "epoch_ms" in capsys.readouterr().err


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


# ------------------------------------------------------------------ the switch


def test_switch_tables_empty_lazily_at_a_new_epoch() -> None:
    """s = 1, tau = 5: a flow counted to 3 in epoch 0 starts again from the hold start in
    epoch 2; the occupancy restarts, the peak stays; the epoch log says where epochs began."""
    sw = Switch((8, 4))
    sw.configure(SwitchConfig(prng_seed=7, sample_threshold=0xFFFFFFFF, hold_start=1))
    sw.install_group((10 << 8) | 20, 5, 0xFFFFFFFF)
    flow = ((10 << 24) | 1, (20 << 24) | 2, 1234, 80, 6)
    other = ((10 << 24) | 9, (20 << 24) | 9, 9, 9, 17)
    for _ in range(3):
        assert sw.process(*flow, epoch=0) is None
    assert sw.process(*other, epoch=0) is None
    regs = sw.registers()
    assert (regs["occupied"], regs["peak_occupied"], regs["epoch"]) == (2, 2, 0)
    for _ in range(4):
        assert sw.process(*flow, epoch=2) is None  # counts 1..4, not 4..7
    msg = sw.process(*flow, epoch=2)
    assert msg is not None and (msg.count, msg.epoch) == (5, 2)
    regs = sw.registers()
    assert (regs["occupied"], regs["peak_occupied"], regs["epoch"]) == (1, 2, 2)
    assert sw.epoch_starts() == [(2, 4)]  # epoch 2 began at the switch's 5th packet
    # A packet claiming an earlier epoch does not take the switch back.
    assert sw.process(*flow, epoch=1) is None
    assert sw.registers()["epoch"] == 2 and int(sw.counts[sw.fps == sw.fps.max()].max()) >= 1


def test_switch_clock_epochs() -> None:
    sw = Switch((8,))
    sw.configure(SwitchConfig(1, 0, 1, epoch_us=1000))
    sw.epoch_origin_us = 5_000
    assert [sw.clock_epoch(t) for t in (0, 4_999, 5_000, 5_999, 6_000, 17_500)] == \
        [0, 0, 0, 0, 1, 12]
    sw.configure(SwitchConfig(1, 0, 1, epoch_us=0))
    assert sw.clock_epoch(10**12) == 0


def test_one_flow_two_epochs_by_hand(tmp_path: Path) -> None:
    """s = 1, tau = 5, T = 10, R = 2, 12 packets in each of two 10 ms epochs. Epoch 0: #1 is
    the hello, #2..#6 report (5), #7..#11 report (5), #12 counts 1. Epoch 1: the slot reads
    empty, so #13 starts at the hold start 1: reports at #17 and #22. Two heavy pairs, each
    detected at its second report."""
    packets = [(i * 0.0005, A) for i in range(12)] + [(0.010 + i * 0.0005, A) for i in range(12)]
    prep = capture(tmp_path, packets)
    r = simulate(prep, one_switch(epoch_ms=10))
    m = r.metrics
    assert (m["hellos"], m["reports"], m["epochs"]) == (1, 4, 2)
    assert (m["heavy_hitters"], m["detected"], m["f1"]) == (2, 2, 1.0)
    ts = prep.trace.ts_ns
    assert r.detection.keys.tolist() == pair_keys(np.array([0, 1]), np.array([0, 0])).tolist()
    assert r.detection.detect_ts.tolist() == [ts[10], ts[21]]
    assert [row["messages"] for row in r.per_epoch] == [3, 2]
    # One epoch over the same packets: reports at #6, #11, #16, #21; one heavy flow.
    whole = simulate(prep, one_switch())
    assert (whole.metrics["reports"], whole.metrics["heavy_hitters"]) == (4, 1)


def test_a_report_counts_in_the_epoch_it_carries(tmp_path: Path) -> None:
    """R = 2 with one report in each of two epochs is no elephant, though two reports of the
    flow arrived."""
    packets = [(i * 0.0005, A) for i in range(7)] + [(0.010 + i * 0.0005, A) for i in range(5)]
    prep = capture(tmp_path, packets)
    r = simulate(prep, one_switch(epoch_ms=10))
    assert (r.metrics["reports"], r.metrics["detected"]) == (2, 0)
    assert simulate(prep, one_switch()).metrics["detected"] == 1


# ------------------------------------------------------------------ ground truth


def test_threshold_from_a_histogram_equals_numpy() -> None:
    rng = np.random.default_rng(1)
    for _ in range(300):
        sizes = (rng.pareto(1.1, int(rng.integers(1, 2000))) * 5 + 1).astype(np.int64)
        for pct in (0.0, 37.5, 90.0, 99.0, 99.9, 99.99, 100.0):
            assert threshold_from_histogram(np.bincount(sizes), pct) == threshold(sizes, pct)


def test_pairs_sizes_and_one_t_over_all_epochs(tmp_path: Path) -> None:
    # epoch 0: A x3, B x1; epoch 1: A x1, B x5
    packets = [(0.0, A), (0.0001, A), (0.0002, B), (0.0003, A),
               (0.0011, B), (0.0012, A), (0.0013, B), (0.0014, B), (0.0015, B), (0.0016, B)]
    prep = capture(tmp_path, packets)
    counts = count_pairs(prep.trace, 1_000_000)
    assert counts.size_hist.tolist()[:6] == [0, 2, 0, 1, 0, 1]
    assert counts.threshold(50) == threshold(np.array([3, 1, 1, 5]), 50) == 2
    heavy = prep.epoch_counts(1.0, 3)
    a, b = (0, 1) if prep.trace.flow[0] == 0 else (1, 0)
    assert list(zip(heavy.heavy_epoch.tolist(), heavy.heavy_flow.tolist(), strict=True)) == \
        sorted([(0, a), (1, b)])
    assert heavy.heavy_cross_ts.tolist() == [prep.trace.ts_ns[3], prep.trace.ts_ns[7]]
    info = epoch_info(prep.trace, 1.0, 50)
    assert (info["epochs"], info["pairs"], info["threshold"]) == (2, 4, 2)
    assert [(e["packets"], e["flows"], e["max_flow_size"]) for e in info["per_epoch"]] == \
        [(4, 2, 3), (6, 2, 5)]


# ------------------------------------------------------------------ against the reference


def _random_capture(tmp_path: Path, n: int = 3000, seed: int = 0) -> PreparedTrace:
    rng = np.random.default_rng(seed)
    flows = [(f"{a}.1.{i % 7}.1", f"{b}.2.2.{i % 5}", 1000 + i, 80, "tcp" if i % 3 else "udp")
             for i, (a, b) in enumerate(rng.integers(1, 40, (80, 2)))]
    ts = np.cumsum(rng.exponential(1e-4, n))
    ts[rng.integers(0, n, 20)] -= 3e-4  # a few timestamps step back
    picks = rng.zipf(1.3, n) % len(flows)
    return capture(tmp_path, [(float(t), flows[j]) for t, j in zip(ts, picks, strict=True)])


@pytest.mark.parametrize("kw", [
    dict(epoch_ms=12.5),
    dict(epoch_ms=3, s=0.6, stages=(8, 4, 2)),
    dict(epoch_ms=3, s=1.0, stages=(4, 2, 1), overflow_policy="reset"),
    dict(epoch_ms=40, k=3, p=0.7, percentile=95, epsilon=0.3),
    dict(epoch_ms=20, k=300, p=0.5),  # beyond 256 switches the flow records are wider
    dict(),
])
def test_simulator_equals_the_plain_python_reference(tmp_path: Path, kw: dict) -> None:
    prep = _random_capture(tmp_path)
    params = Params(**kw)
    r = simulate(prep, params)
    ref = simulate_reference(prep.trace, params, r.T)
    m = r.metrics
    assert m["reports"] == len(ref.reports) and m["hellos"] == sum(ref.hellos)
    assert m["overflows"] == sum(ref.overflows)
    assert m["states_per_switch"] == ref.peak_states
    expected = sorted((int(e) << 32 | f, ts) for (f, e), ts in ref.elephants.items())
    got = list(zip(r.detection.keys.tolist(), r.detection.detect_ts.tolist(), strict=True))
    assert got == expected
    if kw.get("overflow_policy"):
        assert m["overflows"] > 0 and m["table_resets"] > 0


@pytest.mark.parametrize("kw", [
    dict(epoch_ms=12.5, confirm=True),
    dict(epoch_ms=3, s=0.6, stages=(8, 4, 2), confirm=True, confirm_reports=1),
    dict(epoch_ms=3, s=1.0, stages=(4, 2, 1), overflow_policy="reset", confirm=True),
    dict(epoch_ms=40, k=3, p=0.7, percentile=95, epsilon=0.3, confirm=True,
         confirm_reports=5),  # C > R: the candidates are the early detections
    dict(confirm=True, confirm_reports=2),
])
def test_confirm_equals_the_plain_python_reference(tmp_path: Path, kw: dict) -> None:
    prep = _random_capture(tmp_path)
    params = Params(**kw)
    r = simulate(prep, params)
    ref = simulate_reference(prep.trace, params, r.T)
    expected = sorted((int(e) << 32 | f, ts) for (f, e), ts in ref.confirmed.items())
    got = list(zip(r.detection.keys.tolist(), r.detection.detect_ts.tolist(), strict=True))
    assert got == expected and len(got) > 0
    m = r.metrics
    assert m["confirm_candidates"] == ref.candidates > m["confirmed"] == len(expected)
    assert m["reports"] == len(ref.reports) and m["unknown_held_totals"] == 0
    # Early detections keep their R-th report's time; the others are found at the pull.
    early = {(f, e) for (f, e) in ref.confirmed if (f, e) in ref.elephants}
    assert int(r.detection.early.sum()) == len(early)
    # The costs: every switch's pull, and the bigger slots.
    assert m["pull_messages"] > 0 and m["slot_bytes"] == 24
    assert m["messages"] == m["hellos"] + m["reports"] + m["overflows"] + m["pull_messages"]


def test_confirm_off_changes_nothing(tmp_path: Path) -> None:
    prep = _random_capture(tmp_path, seed=4)
    off = simulate(prep, Params(epoch_ms=5, confirm_reports=1)).to_dict()
    on = simulate(prep, Params(epoch_ms=5, confirm=True, confirm_reports=1)).to_dict()
    ref = simulate_reference(prep.trace, Params(epoch_ms=5), off["T"])
    assert off["detected"] == len(ref.elephants) and off["pull_messages"] == 0
    assert off["slot_bytes"] == 12 and "confirmed" not in off
    # The switches and reports are the same with confirm on; only the verdicts differ.
    assert (on["reports"], on["hellos"], on["states_per_switch"]) == \
        (off["reports"], off["hellos"], off["states_per_switch"])


@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_results_do_not_depend_on_the_chunk_size(tmp_path: Path, chunk: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    prep = _random_capture(tmp_path, seed=3)
    params = Params(epoch_ms=4, s=0.5, stages=(16, 8, 4), overflow_policy="reset", delay_ms=0.3,
                    confirm=True, confirm_reports=2)
    whole = simulate(prep, params).to_dict()
    # A chunk boundary inside an epoch and (chunks longer than a packet) an epoch boundary
    # inside a chunk.
    epochs = epochs_of(prep, 4)
    assert epochs[chunk - 1] == epochs[chunk]
    inside = [i for i in range(1, len(epochs)) if epochs[i] != epochs[i - 1] and i % chunk]
    assert inside or chunk == 1
    original = Trace.chunks

    def small(self, columns, size=0):  # noqa: ANN001 - the patched method's own signature
        return original(self, columns, chunk)

    monkeypatch.setattr(Trace, "chunks", small)
    fresh = PreparedTrace(load_trace(prep.trace.paths[0]))
    chunked = simulate(fresh, params).to_dict()
    for d in (whole, chunked):
        d.pop("seconds"), d.pop("packets_per_second")
    assert chunked == whole


def test_per_epoch_csv_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prep = _random_capture(tmp_path, seed=5)
    path = tmp_path / "per-epoch.csv"
    assert main(["simulate", "--trace", prep.trace.paths[0], "--epoch-ms", "25", "--json",
                 "--per-epoch-csv", str(path)]) == 0
    d = json.loads(capsys.readouterr().out)
    rows = list(csv.DictReader(path.open()))
    assert len(rows) == d["epochs"] == len(d["per_epoch"]) > 1
    assert [int(r["packets"]) for r in rows] == [r["packets"] for r in d["per_epoch"]]
    assert sum(int(r["packets"]) for r in rows) == d["packets"]
    assert sum(int(r["true_positives"]) for r in rows) == d["true_positives"]
    assert sum(int(r["messages"]) for r in rows) == d["messages"]
    assert max(int(r["max_states"]) for r in rows) == d["max_states"]
    assert set(rows[0]) >= {"epoch", "start_ns", "packets", "heavy_hitters", "detected",
                            "true_positives", "false_positives", "false_negatives", "f1",
                            "messages", "max_states"}


def test_measured_switch_epochs_replace_the_trace_epochs(tmp_path: Path) -> None:
    """A switch whose own clock began epoch 1 at its 8th packet (index 7), while the trace's
    epoch 1 begins at packet 12: the switch's table empties at packet 8, so its reports
    follow its clock: epoch 0: #1 hello, #2..#6 report; epoch 1 from #8 (hold start 1):
    #8..#12 report, #13..#17 report, ... The timing file round-trips the epoch rows."""
    from herd.delays import EpochStart, MeasuredTiming, delays_csv, read_timing

    packets = [(i * 0.0005, A) for i in range(12)] + [(0.010 + i * 0.0005, A) for i in range(12)]
    prep = capture(tmp_path, packets)
    timing = MeasuredTiming([], [EpochStart(0, 1, 7)])
    path = tmp_path / "timing.csv"
    path.write_text(delays_csv(timing.entries, timing.epochs))
    assert read_timing(path) == timing
    r = simulate(prep, one_switch(epoch_ms=10, T=5, R=1), read_timing(path))
    ts = prep.trace.ts_ns
    # tau = ceil(0.5 * 5) = 3: epoch 0 reports at #4, #7 (counts 3); epoch 1 from #8: #10,
    # #13, #16, #19, #22.
    assert r.metrics["measured_epoch_starts"] == 1
    got = sorted(zip((r.detection.keys >> 32).tolist(), r.detection.detect_ts.tolist(),
                     strict=True))
    assert got == [(0, int(ts[3])), (1, int(ts[9]))]
    plain = simulate(prep, one_switch(epoch_ms=10, T=5, R=1))
    assert sorted(zip((plain.detection.keys >> 32).tolist(),
                      plain.detection.detect_ts.tolist(), strict=True)) == \
        [(0, int(ts[3])), (1, int(ts[14]))]


def test_many_pending_actions_grow_the_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    """A control loop slower than the trace: every hello's entry is still pending at the end
    (thousands of actions queued, beyond the queue's first allocation), so no packet is
    counted; and a delay inside the trace gives the same result whatever the chunk size."""
    from conftest import REPO

    prep = PreparedTrace(load_trace(REPO / "pcap" / "synth-20k.pcap"))
    never = simulate(prep, Params(delay_ms=1e7, epoch_ms=50)).metrics
    assert never["hellos"] > 1024 and never["reports"] == 0 and never["table_writes"] == 0
    params = Params(delay_ms=40, epoch_ms=50, overflow_policy="reset", stages=(32, 16, 8))
    whole = simulate(prep, params).to_dict()
    original = Trace.chunks
    monkeypatch.setattr(Trace, "chunks", lambda self, columns, size=0: original(self, columns,
                                                                                 333))
    chunked = simulate(PreparedTrace(load_trace(prep.trace.paths[0])), params).to_dict()
    for d in (whole, chunked):
        d.pop("seconds"), d.pop("packets_per_second")
    assert chunked == whole and whole["table_writes"] > 0


def test_switch_epochs_that_follow_the_trace_change_nothing(tmp_path: Path) -> None:
    """Each switch's epoch starts taken from the trace's own epochs (as a perfectly aligned
    testbed run would record them): the same result as the trace's epochs, switch by
    switch."""
    from herd.delays import EpochStart, MeasuredTiming

    prep = _random_capture(tmp_path, seed=8)
    params = Params(epoch_ms=4, k=4, p=0.8, s=0.5)
    ingress = prep.ingress(params.k, params.p, params.seed)
    epochs = np.array(epochs_of(prep, 4))
    starts = []
    for sw in range(params.k):
        mine = epochs[ingress == sw]
        changes = np.flatnonzero(np.r_[False, mine[1:] != mine[:-1]])
        starts += [EpochStart(sw, int(mine[j]), int(j)) for j in changes]
    assert len({s.switch for s in starts}) == params.k
    own = simulate(prep, params, MeasuredTiming([], starts)).to_dict()
    plain = simulate(prep, params).to_dict()
    for d in (own, plain):
        for key in ("seconds", "packets_per_second", "measured_delays",
                    "measured_delays_mismatched", "measured_epoch_starts"):
            d.pop(key, None)
    assert own == plain and plain["detected"] > 0

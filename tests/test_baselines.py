"""The baselines (strawman, probabilistic sampling, probabilistic reporting) on hand-made
traces, against outcomes worked out by hand or by a plain-Python reference that follows the
definitions packet by packet."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import herd.baselines as bl
from herd.cli import main
from herd.errors import HerdInputError
from herd.evaluate import PreparedTrace, simulate
from herd.params import Params
from herd.pcapwrite import write_pcap
from herd.prng import draws, probability_threshold, switch_seed
from herd.trace import load_trace

# Flows (src, dst, sport, dport, proto) and their packet counts. Different sources, so the
# load balancer gives them different ingress pairs.
FLOWS = [
    ((10 << 24) | 1, (20 << 24) | 1, 1000, 80, 6),
    ((11 << 24) | 2, (21 << 24) | 2, 1001, 443, 6),
    ((12 << 24) | 3, (22 << 24) | 3, 1002, 53, 17),
    ((13 << 24) | 4, (20 << 24) | 4, 1003, 80, 6),
    ((14 << 24) | 5, (21 << 24) | 5, 1004, 22, 6),
    ((15 << 24) | 6, (22 << 24) | 6, 0, 0, 1),
    ((16 << 24) | 7, (23 << 24) | 7, 1006, 80, 6),
]
COUNTS = [30, 12, 10, 9, 3, 1, 17]


def make_trace(tmp_path: Path, counts: list[int] = COUNTS, seed: int = 3) -> PreparedTrace:
    """The flows' packets interleaved in a seeded random order, 10 µs apart."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(np.repeat(np.arange(len(counts)), counts))
    cols = np.array([FLOWS[i] for i in order], dtype=np.int64)
    ts = 1_455_800_400_000_000_000 + np.arange(len(order), dtype=np.int64) * 10_000
    path = tmp_path / "hand.pcap"
    write_pcap(path, ts, cols[:, 0], cols[:, 1], cols[:, 2], cols[:, 3], cols[:, 4])
    return PreparedTrace(load_trace(path))


def flow_counts_by_key(prep: PreparedTrace) -> dict[int, int]:
    """Trace flow index -> packets, checked against COUNTS by 5-tuple."""
    t = prep.trace
    out = {}
    for f in range(t.flows):
        key = (int(t.flow_src[f]), int(t.flow_dst[f]), int(t.flow_sport[f]),
               int(t.flow_dport[f]), int(t.flow_proto[f]))
        out[f] = COUNTS[FLOWS.index(key)]
    return out


def per_switch_distinct(prep: PreparedTrace, params: Params) -> list[int]:
    ingress = prep.ingress(params.k, params.p, params.seed)
    pairs = set(zip(ingress.tolist(), prep.trace.flow.tolist(), strict=True))
    return [sum(1 for sw, _ in pairs if sw == s) for s in range(params.k)]


def herd_metric_keys(prep: PreparedTrace) -> set[str]:
    return set(simulate(prep, Params(k=3, T=10)).metrics)


# ------------------------------------------------------------------------------ strawman


def test_strawman_detects_exactly_the_flows_at_or_above_T(tmp_path: Path) -> None:
    prep = make_trace(tmp_path)
    params = Params(algorithm="strawman", k=3, p=0.6, T=10)
    r = simulate(prep, params)
    m = r.metrics
    truth = flow_counts_by_key(prep)
    assert sorted(truth[f] for f in np.flatnonzero(r.detected)) == [10, 12, 17, 30]
    assert (m["f1"], m["precision"], m["recall"]) == (1.0, 1.0, 1.0)
    distinct = per_switch_distinct(prep, params)
    assert sum(distinct) > len(FLOWS)  # p = 0.6 splits flows over two switches
    assert m["messages_per_switch"] == distinct
    assert m["states_per_switch"] == distinct
    assert (m["reports"], m["hellos"], m["overflows"]) == (sum(distinct), 0, 0)
    assert m["max_messages_per_switch"] == max(distinct) == m["max_states"]
    # every counter arrives at the end of the window
    detected_ts = r.detect_ts[r.detected]
    assert (detected_ts == prep.trace.ts_ns[-1]).all()
    assert herd_metric_keys(prep) <= set(m)


def test_strawman_budgets_first_flows_and_largest_counters(tmp_path: Path) -> None:
    prep = make_trace(tmp_path)
    params = Params(algorithm="strawman", k=1, p=1.0, T=10)
    t = prep.trace
    truth = flow_counts_by_key(prep)
    first_two = [int(f) for f in dict.fromkeys(t.flow.tolist())][:2]  # flows numbered by arrival
    r = bl.run_baseline(prep, params, memory=2).result
    assert r.metrics["max_states"] == 2 and r.metrics["untracked_flows"] == len(FLOWS) - 2
    assert set(np.flatnonzero(r.detected)) == {f for f in first_two if truth[f] >= 10}
    r = bl.run_baseline(prep, params, messages=2).result
    assert r.metrics["max_messages_per_switch"] == 2
    assert sorted(truth[f] for f in np.flatnonzero(r.detected)) == [17, 30]
    with pytest.raises(HerdInputError, match="memory=0"):
        bl.run_baseline(prep, params, memory=0)


# ------------------------------------------------------------------------------ sampling


def test_sampling_with_q_1_is_exact(tmp_path: Path) -> None:
    prep = make_trace(tmp_path)
    params = Params(algorithm="sampling", q=1.0, k=3, p=0.6, T=10)
    r = simulate(prep, params)
    m = r.metrics
    assert (m["f1"], m["detected"], m["heavy_hitters"]) == (1.0, 4, 4)
    ingress = prep.ingress(3, 0.6, 1)
    assert m["messages_per_switch"] == np.bincount(ingress, minlength=3).tolist()
    assert m["states_per_switch"] == [0, 0, 0] and m["max_states"] == 0
    # detected at the T-th packet: the moment the flow became a heavy hitter
    assert (r.detect_ts[r.detected] == prep.crossing(10)[r.detected]).all()
    assert m["detection_delay_ms_p50"] == 0.0
    assert herd_metric_keys(prep) <= set(m)


def test_sampling_matches_a_packet_by_packet_reference(tmp_path: Path) -> None:
    prep = make_trace(tmp_path)
    params = Params(algorithm="sampling", q=0.3, k=3, p=0.6, T=10, seed=7)
    r = simulate(prep, params)
    ingress = prep.ingress(3, 0.6, 7).tolist()
    states = [switch_seed(7, sw) for sw in range(3)]
    threshold = probability_threshold(0.3)
    sent = [0, 0, 0]
    sampled: Counter[int] = Counter()
    for i, f in enumerate(prep.trace.flow.tolist()):
        sw = ingress[i]
        states[sw] = draws(states[sw], 1)[0]
        if states[sw] <= threshold:
            sent[sw] += 1
            sampled[f] += 1
    assert r.metrics["messages_per_switch"] == sent
    expected = {f for f, c in sampled.items() if c / 0.3 >= 10}
    assert set(np.flatnonzero(r.detected).tolist()) == expected


# ------------------------------------------------------------------------------ reporting


def test_reporting_with_one_switch_reports_floor_count_over_tau(tmp_path: Path) -> None:
    """k = 1: r = 1, tau = ceil(0.5 * 10 / 1) = 5; every crossing is reported."""
    prep = make_trace(tmp_path)
    params = Params(algorithm="reporting", k=1, p=1.0, T=10, epsilon=0.5, R=2)
    run = bl.run_baseline(prep, params)
    truth = flow_counts_by_key(prep)
    assert bl.reporting_entry(params, 10) == (5, 0xFFFFFFFF)
    assert run.report_count is not None
    assert run.report_count.tolist() == [truth[f] // 5 for f in range(prep.trace.flows)]
    m = run.result.metrics
    assert m["reports"] == sum(c // 5 for c in COUNTS)
    assert m["max_states"] == len(FLOWS) and m["hellos"] == 0 and m["tau"] == 5
    assert set(np.flatnonzero(run.result.detected)) == {f for f in truth if truth[f] // 5 >= 2}
    assert herd_metric_keys(prep) <= set(m)


def test_reporting_matches_a_packet_by_packet_reference(tmp_path: Path) -> None:
    """k = 3: tau = ceil(0.3 * 10 / 3) = 1, r = 1/3, on each switch's own generator."""
    prep = make_trace(tmp_path)
    params = Params(algorithm="reporting", k=3, p=0.6, T=10, epsilon=0.3, seed=5)
    tau, thr = bl.reporting_entry(params, 10)
    assert (tau, thr) == (max(1, math.ceil(0.3 * 10 / 3)), probability_threshold(1 / 3))
    run = bl.run_baseline(prep, params)
    ingress = prep.ingress(3, 0.6, 5).tolist()
    states = [switch_seed(5, sw) for sw in range(3)]
    count: Counter[tuple[int, int]] = Counter()
    reports: Counter[int] = Counter()
    sent = [0, 0, 0]
    for i, f in enumerate(prep.trace.flow.tolist()):
        sw = ingress[i]
        count[sw, f] += 1
        if count[sw, f] >= tau:
            count[sw, f] = 0
            states[sw] = draws(states[sw], 1)[0]
            if states[sw] <= thr:
                reports[f] += 1
                sent[sw] += 1
    assert run.result.metrics["messages_per_switch"] == sent
    assert run.report_count is not None
    assert run.report_count.tolist() == [reports[f] for f in range(prep.trace.flows)]
    assert run.result.R == 3  # round(1 / 0.3)


def test_reporting_memory_budget_tracks_the_first_flows_only(tmp_path: Path) -> None:
    prep = make_trace(tmp_path)
    params = Params(algorithm="reporting", k=1, p=1.0, T=10, epsilon=0.5, R=1)
    run = bl.run_baseline(prep, params, memory=3)
    first_three = [int(f) for f in dict.fromkeys(prep.trace.flow.tolist())][:3]
    assert run.report_count is not None
    untracked = set(range(prep.trace.flows)) - set(first_three)
    assert all(run.report_count[f] == 0 for f in untracked)
    assert run.result.metrics["max_states"] == 3


# ------------------------------------------------------------------------------ shared


@pytest.mark.parametrize("algorithm", ["strawman", "sampling", "reporting"])
def test_identical_seeds_identical_output(tmp_path: Path, algorithm: str) -> None:
    prep = make_trace(tmp_path)
    params = Params(algorithm=algorithm, k=4, p=0.7, T=10, q=0.4, epsilon=0.4)
    one, two = simulate(prep, params).to_dict(), simulate(prep, params).to_dict()
    for d in (one, two):
        d.pop("seconds"), d.pop("packets_per_second")
    assert one == two


def test_sampling_seeds_matter(tmp_path: Path) -> None:
    prep = make_trace(tmp_path, [200, 150, 100, 50, 20, 10, 5])
    a = simulate(prep, Params(algorithm="sampling", k=2, q=0.5, T=50, seed=1)).metrics
    b = simulate(prep, Params(algorithm="sampling", k=2, q=0.5, T=50, seed=2)).metrics
    assert a["messages_per_switch"] != b["messages_per_switch"]


def test_sorted_pairs_equal_dense_pairs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prep = make_trace(tmp_path)
    params = Params(k=3, p=0.6)
    dense = bl.switch_flow_pairs(prep, params)
    monkeypatch.setattr(bl, "DENSE_PAIR_LIMIT", 0)
    monkeypatch.setattr(bl, "_PAIRS", type(bl._PAIRS)())
    sparse = bl.switch_flow_pairs(prep, params)
    for name in ("of_packet", "flow", "switch", "first", "packets", "rank"):
        assert getattr(dense, name).tolist() == getattr(sparse, name).tolist(), name


def test_unknown_algorithm_is_an_input_error(tmp_path: Path) -> None:
    prep = make_trace(tmp_path)
    with pytest.raises(HerdInputError, match="algorithm=herd"):
        bl.run_baseline(prep, Params(algorithm="herd"))
    with pytest.raises(HerdInputError, match="algorithm"):
        Params(algorithm="magic")


def test_cli_simulate_baseline_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    prep = make_trace(tmp_path)
    assert main(["simulate", "--trace", prep.trace.paths[0], "--algorithm", "strawman",
                 "--T", "10", "--k", "3", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["f1"] == 1.0 and d["params"]["algorithm"] == "strawman"
    # argparse rejects an unknown algorithm itself: exit status 2
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--trace", prep.trace.paths[0], "--algorithm", "bogus"])
    assert e.value.code == 2

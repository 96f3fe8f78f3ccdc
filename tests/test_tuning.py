"""Tuning under memory and communication budgets: budgets respected (on the trace tuned and
on another part of it), R chosen after the runs exactly as a run with that R detects, and
confirm's C likewise, confirm on or off decided within the same bytes and messages (pulls
included), determinism, parameter files, and one-line errors for budgets nothing fits."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from herd.cli import main
from herd.errors import HerdInputError
from herd.evaluate import PreparedTrace, simulate
from herd.params import Params, load_params_file
from herd.switch import SLOT_BYTES, SLOT_BYTES_CONFIRM
from herd.synth import write_synthetic_pcap
from herd.trace import Trace, load_trace
from herd.tuning import (
    Config,
    ConfirmSummary,
    Evaluator,
    RunSummary,
    epsilon_lattice,
    halving_stages,
    make_point,
    make_space,
    point_params,
    run_config,
    split_trace,
    tune,
    tune_baseline,
)


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tuning") / "synth-100k.pcap"
    write_synthetic_pcap(path, 100_000, seed=2)
    return path


@pytest.fixture(scope="module")
def prep(trace_file: Path) -> PreparedTrace:
    return PreparedTrace(load_trace(trace_file, use_cache=False))


S, C = 500, 1200


def test_lattices_and_layouts() -> None:
    assert halving_stages(7168, 3) == (4096, 2048, 1024)
    for total, d in ((1000, 3), (5, 4), (2, 3), (12345, 4)):
        st = halving_stages(total, d)
        assert sum(st) == total and all(x >= 1 for x in st)
        assert list(st) == sorted(st, reverse=True)
    lat = epsilon_lattice(86, 10)
    assert lat[0] == 1.0 and lat == sorted(lat, reverse=True)
    taus = [tuple(max(1, math.ceil(e * 86 / loc)) for loc in range(1, 11)) for e in lat]
    assert len(set(taus)) == len(taus)  # one epsilon per distinct set of mule thresholds


def test_f1_for_every_R_is_what_a_run_with_that_R_gets(prep: PreparedTrace) -> None:
    base = Params(k=10)
    cfg = Config(0.1, 0.1, (512, 256, 128))
    summary = run_config(prep, base, cfg, seed=3)
    for R in range(1, 14):
        point = make_point(cfg, [summary], float("inf"), float("inf"), R=R)
        m = simulate(prep, base.with_(s=0.1, epsilon=0.1, stages=(512, 256, 128), seed=3,
                                      R=R)).metrics
        assert point.f1 == pytest.approx(m["f1"], abs=1e-12), R
        assert point.precision == pytest.approx(m["precision"], abs=1e-12)
        assert point.recall == pytest.approx(m["recall"], abs=1e-12)
    chosen = make_point(cfg, [summary], float("inf"), float("inf"))
    assert chosen.f1 == max(make_point(cfg, [summary], 1e9, 1e9, R=R).f1 for R in range(1, 40))


@pytest.mark.parametrize("epoch_ms", [0, 50])
def test_every_C_from_one_run_at_C_1_is_what_a_run_with_that_C_gets(
        prep: PreparedTrace, epoch_ms: float) -> None:
    """Confirm's C, like R, is chosen after the runs: a run at C = 1 tells F1 and the
    messages for every C - exactly with one epoch; with several the busiest switch-epoch is
    an upper bound."""
    base = Params(k=10, epoch_ms=epoch_ms)
    cfg = Config(0.1, 0.15, (512, 256, 128), confirm=True)
    summary = run_config(prep, base, cfg, seed=3)
    assert summary.confirm is not None
    for C in (1, 2, 3, 5, 8):
        point = make_point(cfg, [summary], float("inf"), float("inf"), C=C)
        assert point.C == C and point.R >= C
        m = simulate(prep, base.with_(s=0.1, epsilon=0.15, stages=(512, 256, 128), seed=3,
                                      confirm=True, confirm_reports=C, R=point.R)).metrics
        assert point.f1 == pytest.approx(m["f1"], abs=1e-12), C
        assert point.recall == pytest.approx(m["recall"], abs=1e-12)
        assert point.total_messages == m["messages"]
        if epoch_ms:
            assert point.max_messages >= m["max_messages_per_switch_epoch"]
            assert 0 < point.pull_messages <= m["pull_messages"] // 10
        else:
            assert point.max_messages == m["max_messages_per_switch_epoch"]
            assert point.pull_messages * 10 == m["pull_messages"]


def _confirm_run(f1_tp: list[int], messages: list[int]) -> RunSummary:
    """A made-up confirm run over 10 heavy pairs: tp and messages per C (no false positives)."""
    n = len(f1_tp)
    zero = np.zeros(n, np.int64)
    conf = ConfirmSummary(np.array(f1_tp), zero, np.array(messages), np.array(messages),
                          zero)
    return RunSummary(max_states=5, max_messages=messages[0], messages=messages[0], overflows=0,
                      heavy=10, tp=np.array([9, 8]), fp=np.array([1, 0]), r_free=True,
                      confirm=conf)


def test_C_is_the_best_that_fits_the_messages_on_every_seed() -> None:
    cfg = Config(0.2, 0.1, (8, 4, 2), confirm=True)
    runs = [_confirm_run([10, 9, 7], [120, 100, 90]), _confirm_run([10, 9, 6], [110, 104, 95])]
    assert make_point(cfg, runs, 10, 200).C == 1  # room for the biggest pull
    p = make_point(cfg, runs, 10, 105)  # C = 1 does not fit on the first seed
    assert (p.C, p.f1, p.max_messages, p.feasible) == (2, pytest.approx(0.9 / 0.95), 104, True)
    p = make_point(cfg, runs, 10, 100)  # C = 2 does not fit on the second seed
    assert (p.C, p.max_messages, p.feasible) == (3, 95, True)
    assert not make_point(cfg, runs, 10, 50).feasible
    assert not make_point(cfg, runs, 4, 200).feasible  # states
    # the same elephants at C = 1 and 2: the smaller pull
    tie = [_confirm_run([10, 10, 7], [120, 100, 90])]
    assert make_point(cfg, tie, 10, 200).C == 2


def test_confirm_slots_take_the_same_bytes(prep: PreparedTrace) -> None:
    on = make_space(prep, Params(), 501, None, 0.05, confirm=True)
    off = make_space(prep, Params(), 501, None, 0.05, confirm=False)
    assert (off.slots, off.slot_bytes, on.slots, on.slot_bytes) == (501, 12, 250, 24)
    assert on.slots * SLOT_BYTES_CONFIRM <= 501 * SLOT_BYTES < (on.slots + 1) * SLOT_BYTES_CONFIRM
    with pytest.raises(HerdInputError, match="memory=1: a 24-byte slot does not fit 12 bytes"):
        make_space(prep, Params(), 1, None, 0.05, confirm=True)
    with pytest.raises(HerdInputError, match="24-byte slot"):
        tune(prep, Params(), 1, C, seeds=1, modes=(True,))


def test_tune_decides_confirm_within_the_same_bytes_and_messages(prep: PreparedTrace) -> None:
    """Both modes are tuned within S x 12 bytes and C messages (pulls included), the better
    F1 wins, and each mode's parameters, simulated, keep the budgets and give its F1."""
    result = tune(prep, Params(), S, C, seeds=2, workers=1, quick=True)
    modes = {m.space.name: m for m in result.modes}
    assert set(modes) == {"herd", "herd+confirm"}
    limit = int(C * 0.95)
    for name, mode in modes.items():
        b = mode.best
        assert b is not None, name
        sb = SLOT_BYTES_CONFIRM if name == "herd+confirm" else SLOT_BYTES
        assert b.config.confirm == (name == "herd+confirm")
        assert b.config.table_bytes == sum(b.config.stages) * sb <= S * SLOT_BYTES
        assert b.max_states * sb <= S * SLOT_BYTES and b.max_messages <= limit
        params = point_params(Params(), b)
        f1s = []
        for seed in mode.seeds:
            m = simulate(prep, params.with_(seed=seed)).metrics
            assert m["table_bytes_per_switch"] <= S * SLOT_BYTES
            assert m["max_states"] * sb <= S * SLOT_BYTES
            assert m["max_messages_per_switch"] <= limit  # hellos + reports + pulls
            if params.confirm:
                assert m["pull_messages"] > 0 and m["slot_bytes"] == 24
            f1s.append(m["f1"])
        assert np.mean(f1s) == pytest.approx(b.f1, abs=1e-12), name
    herd, confirm = modes["herd"].best, modes["herd+confirm"].best
    assert result.params.confirm == (confirm.f1 > herd.f1)
    assert result.best.f1 == max(herd.f1, confirm.f1)
    d = result.to_dict()
    assert d["winner"] == ("herd+confirm" if result.params.confirm else "herd")
    assert d["budgets"]["memory_bytes"] == S * 12 and len(d["modes"]) == 2
    only = tune(prep, Params(), S, C, seeds=2, workers=1, quick=True, modes=(False,))
    assert [m.space.name for m in only.modes] == ["herd"] and not only.params.confirm
    assert only.best.f1 == herd.f1


def test_tune_respects_the_budgets_and_is_deterministic(prep: PreparedTrace) -> None:
    first = tune(prep, Params(), S, C, seeds=2, workers=1)
    p = first.params
    assert sum(p.stages) <= S and p.R is not None
    assert first.best.max_states <= S and first.best.max_messages <= C * 0.95
    assert first.start is not None and first.best.f1 >= first.start.f1
    # Re-simulate the tuned parameters with every seed the result names.
    f1s = []
    for seed in first.seeds:
        m = simulate(prep, p.with_(seed=seed)).metrics
        assert m["max_states"] <= S and m["max_messages_per_switch"] <= C
        f1s.append(m["f1"])
    assert np.mean(f1s) == pytest.approx(first.best.f1, abs=1e-12)
    again = tune(prep, Params(), S, C, seeds=2, workers=1)
    one, two = first.to_dict(), again.to_dict()
    one.pop("seconds"), two.pop("seconds")
    assert one == two


def test_tune_with_two_workers_gives_the_same_answer(prep: PreparedTrace) -> None:
    one = tune(prep, Params(), S, C, seeds=2, workers=1, quick=True).to_dict()
    two = tune(prep, Params(), S, C, seeds=2, workers=2, quick=True).to_dict()
    for d in (one, two):
        d.pop("seconds"), d.pop("simulations")
    assert one == two


def test_budgets_nothing_fits_are_one_line_errors(prep: PreparedTrace) -> None:
    with pytest.raises(HerdInputError, match=r"messages=100: no setting fits .* hellos"):
        tune(prep, Params(), S, 100, seeds=1)
    for memory, messages, field in ((0, C, "memory=0"), (S, -5, "messages=-5")):
        with pytest.raises(HerdInputError, match=field):
            tune(prep, Params(), memory, messages)
    with pytest.raises(HerdInputError, match="seeds=0"):
        tune(prep, Params(), S, C, seeds=0)


def test_with_epochs_the_hellos_are_counted_per_switch_and_epoch(prep: PreparedTrace) -> None:
    """Group entries outlive epochs, so a switch sends each group's hello in one epoch only:
    a per-epoch budget below the trace's hellos per switch (465 here) still fits."""
    from herd.baselines import groups_per_switch
    from herd.tuning import _hellos_needed

    base = Params(epoch_ms=100)  # 10 epochs of this 1-second trace
    per_epoch = _hellos_needed(prep, base, [1])
    whole = int(groups_per_switch(prep, base).max())
    quiet = simulate(prep, base.with_(s=1e-4, epsilon=1.0)).metrics  # hellos, hardly more
    assert per_epoch < whole and per_epoch <= quiet["max_messages_per_switch_epoch"] <= \
        per_epoch + quiet["reports"] + quiet["overflows"]
    budget = int(whole * 0.8)
    result = tune(prep, base, S, budget, seeds=1, workers=1, quick=True)
    for mode in result.modes:
        assert mode.best is not None and mode.best.max_messages <= budget * 0.95


def test_cli_text_says_what_a_slot_takes(trace_file: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tune", "--trace", str(trace_file), "--memory", str(S), "--messages", str(C),
                 "--seeds", "1", "--no-confirm"]) == 0
    out = capsys.readouterr().out
    assert f"S={S} slots x 12 bytes = {S * 12} bytes" in out
    assert "a slot takes 12 bytes" in out and "with confirm 24 " in out
    assert "Herd          : F1=" in out and "Herd + confirm" not in out


def test_cli_errors_exit_2(trace_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for extra in (["--memory", "0", "--messages", "1000"], ["--memory", "500", "--messages", "50"]):
        assert main(["tune", "--trace", str(trace_file), "--seeds", "1", *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("herd: error: ") and "\n" not in err


def test_cli_json_and_parameter_file(trace_file: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tuned.json"
    assert main(["tune", "--trace", str(trace_file), "--memory", str(S), "--messages", str(C),
                 "--seeds", "1", "--json", "--write-params", str(out)]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("s", "epsilon", "R", "stages", "f1", "states", "messages", "f1_std"):
        assert key in d
    assert d["states"] <= S and d["messages"] <= C
    saved = json.loads(out.read_text())
    assert saved["budgets"]["memory"] == S and saved["budgets"]["messages"] == C
    assert saved["trace_digest"] == d["trace_digest"] and "herd_version" in saved
    assert saved["expected"]["f1"] == d["f1"]
    params = Params.from_dict(load_params_file(out))
    assert (params.s, params.epsilon, params.R) == (d["s"], d["epsilon"], d["R"])
    # the winner's confirm setting, and both modes' bests with their bytes
    assert params.confirm == d["confirm"] == (d["winner"] == "herd+confirm")
    assert d["slot_bytes"] == (24 if params.confirm else 12)
    assert d["table_bytes"] == sum(params.stages) * d["slot_bytes"] <= S * 12
    assert [m["mode"] for m in saved["modes"]] == ["herd", "herd+confirm"]
    if params.confirm:
        assert params.confirm_reports == d["confirm_reports"] <= params.R
    # herd simulate reads the file and measures what tune expected (seed 1 of 1, confirmed
    # on seed 2 as well: the mean is over both)
    assert main(["simulate", "--trace", str(trace_file), "--params", str(out), "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["max_messages_per_switch"] <= C and sim["max_states"] <= S
    assert sim["f1"] in (pytest.approx(d["f1_min"]), pytest.approx(d["f1_max"]))


def test_split_trace_renumbers_flows(prep: PreparedTrace) -> None:
    t = prep.trace
    parts = [split_trace(t, 0, 40_000), split_trace(t, 40_000, t.packets)]
    assert sum(p.packets for p in parts) == t.packets
    total: dict[tuple[int, ...], int] = {}
    for p in parts:
        assert isinstance(p, Trace) and p.digest != t.digest
        first_seen = list(dict.fromkeys(p.flow.tolist()))
        assert first_seen == list(range(p.flows))  # numbered by first appearance
        counts = p.flow_counts()
        for f in (0, p.flows // 2, p.flows - 1):
            idx = np.flatnonzero(p.flow == f)
            assert (p.src[idx] == p.flow_src[f]).all() and (p.dport[idx] == p.flow_dport[f]).all()
        for f in range(p.flows):
            key = (int(p.flow_src[f]), int(p.flow_dst[f]), int(p.flow_sport[f]),
                   int(p.flow_dport[f]), int(p.flow_proto[f]))
            total[key] = total.get(key, 0) + int(counts[f])
    assert sorted(total.values()) == sorted(t.flow_counts().tolist())
    with pytest.raises(HerdInputError, match="split"):
        split_trace(t, 10, 10)


def test_baselines_fit_the_same_budgets(prep: PreparedTrace) -> None:
    limit = int(C * 0.95)
    for alg in ("strawman", "sampling", "reporting"):
        p = tune_baseline(prep, Params(), alg, S, C, seeds=2)
        assert p is not None and p.feasible, alg
        assert p.max_messages <= limit and p.max_states <= S
    sampling = tune_baseline(prep, Params(), "sampling", S, C, seeds=2)
    assert sampling is not None and sampling.max_states == 0


@pytest.mark.slow
def test_tuning_generalises_to_another_part_of_the_trace(tmp_path: Path) -> None:
    """Tune on the first half of a 400k-packet trace; on the second half the tuned
    parameters stay within the budgets and within 0.05 F1 of the best point of a grid
    searched on that second half itself."""
    path = tmp_path / "t400k.pcap"
    write_synthetic_pcap(path, 400_000, seed=1)
    t = load_trace(path)
    half = t.packets // 2
    first = PreparedTrace(split_trace(t, 0, half))
    second = PreparedTrace(split_trace(t, half, t.packets))
    memory, messages = 1000, 2000
    tuned = tune(first, Params(), memory, messages, seeds=3, workers=1, modes=(False,))
    p = tuned.params
    seeds = [1, 2, 3, 4, 5, 6]
    ev = Evaluator(second, Params(), seeds, state_limit=memory, message_limit=messages)
    on_second = ev.point(Config(p.s, p.epsilon, p.stages, p.overflow_policy), R=p.R)
    assert on_second.max_states <= memory and on_second.max_messages <= messages
    grid = [ev.point(Config(s, e, halving_stages(memory, 3)))
            for s, e in itertools.product((0.02, 0.05, 0.1, 0.2, 0.4), (0.05, 0.1, 0.15, 0.3))]
    best = max((g for g in grid if g.feasible), key=lambda g: g.f1)
    assert on_second.f1 >= best.f1 - 0.05, (on_second.summary(), best.summary())

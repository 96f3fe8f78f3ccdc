"""The evaluation figures on a small synthetic trace: every PNG with the CSV behind it, the
CSV layouts, budgets respected by the tuned points (Herd + confirm's in bytes and with its
pulls), determinism across worker counts, and one-line errors for bad input. Also the sweep
CSV's confirm columns (an evaluation output like the figures)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from herd.cli import main
from herd.errors import HerdInputError
from herd.params import Params
from herd.prepared import PreparedTrace
from herd.synth import write_synthetic_pcap
from herd.trace import load_trace

FIGURES = ("accuracy_vs_epsilon", "accuracy_vs_s", "messages_vs_epsilon", "states_vs_s",
           "f1_vs_memory_budget", "f1_vs_message_budget", "f1_vs_messages")
SMALL = ["--epsilons", "0.05,0.2", "--s-values", "0.05,0.3", "--memory-budgets", "60,400",
         "--message-budgets", "400,800", "--seeds", "1"]


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("figures") / "synth-40k.pcap"
    write_synthetic_pcap(path, 40_000, seed=3)
    return path


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_figures_cli_writes_every_png_and_csv(trace_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs"
    assert main(["figures", "--trace", str(trace_file), "--out", str(out), "--workers", "1",
                 *SMALL]) == 0
    for name in FIGURES:
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000, name
        assert (out / f"{name}.csv").stat().st_size > 0, name
    # the sweep layout earlier Herd testbeds used: <parameter>,f1score,precision,recall
    for name, param in (("accuracy_vs_epsilon", "epsilon"), ("accuracy_vs_s", "s")):
        header = (out / f"{name}.csv").read_text().splitlines()[0].split(",")
        assert header[:4] == [param, "f1score", "precision", "recall"]
        assert [float(r[param]) for r in rows(out / f"{name}.csv")] == (
            [0.05, 0.2] if param == "epsilon" else [0.05, 0.3])
    for name in ("messages_vs_epsilon", "states_vs_s"):
        algs = {r["algorithm"] for r in rows(out / f"{name}.csv")}
        assert algs == {"herd", "strawman", "sampling", "reporting"}
    meta = json.loads((out / "figures.json").read_text())
    assert meta["memory_budgets"] == [60, 400] and meta["message_budgets"] == [400, 800]
    assert meta["T"] >= 1 and len(meta["trace_digest"]) == 64 and "herd_version" in meta

    # budgets: every point that claims to fit does, on the busiest switch
    mem = rows(out / "f1_vs_memory_budget.csv")
    msg = rows(out / "f1_vs_message_budget.csv")
    assert {r["algorithm"] for r in mem} == {"herd", "strawman", "sampling", "reporting"}
    for r in mem + msg:
        if r["fits"] == "True":
            assert int(r["max_states_per_switch"]) <= int(r["memory_budget"]), r
            assert int(r["max_messages_per_switch"]) <= int(r["message_budget"]), r
    # the strawman holds the first S flows: its states are the budget (or all it sees)
    straw = [r for r in mem if r["algorithm"] == "strawman"]
    assert [int(r["max_states_per_switch"]) for r in straw][0] == 60
    check_f1_vs_messages(out, meta, msg)


def check_f1_vs_messages(out: Path, meta: dict, by_budget: list[dict[str, str]]) -> None:
    """Every algorithm at every communication budget, Herd + confirm tuned within the same
    bytes (24-byte slots, S x 12 // 24 of them) and messages (its pulls included); Herd and
    the baselines as in f1_vs_message_budget."""
    table = rows(out / "f1_vs_messages.csv")
    budgets = meta["message_budgets"]
    S = meta["fixed_memory"]
    for alg in ("herd", "herd+confirm", "strawman", "sampling", "reporting"):
        assert sorted(int(r["message_budget"]) for r in table if r["algorithm"] == alg) == \
            budgets, alg
    for r in table:
        assert int(r["memory_budget"]) == S
        if r["fits"] != "True":
            continue
        assert int(r["max_messages_per_switch"]) <= int(r["message_budget"]), r
        if r["algorithm"] == "herd+confirm":
            assert (r["slot_bytes"], r["budget_slots"]) == ("24", str(S * 12 // 24))
            assert int(r["table_bytes"]) <= S * 12 and int(r["pull_messages"]) > 0
            assert int(r["max_states_per_switch"]) * 24 <= S * 12
            assert 1 <= int(r["C"]) <= int(r["R"])
        elif r["algorithm"] == "herd":
            assert r["slot_bytes"] == "12" and int(r["table_bytes"]) <= S * 12
            assert r["C"] == "" and r["pull_messages"] == ""
    confirmed = [r for r in table if r["algorithm"] == "herd+confirm" and r["fits"] == "True"]
    assert confirmed, "Herd + confirm fits no budget"
    same = {(r["algorithm"], r["message_budget"]): r["f1score"] for r in table}
    for r in by_budget:
        assert same[(r["algorithm"], r["message_budget"])] == r["f1score"], r


def test_two_workers_give_the_same_figures(trace_file: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["figures", "--trace", str(trace_file), "--out", str(one), "--workers", "1",
                 *SMALL]) == 0
    assert main(["figures", "--trace", str(trace_file), "--out", str(two), "--workers", "2",
                 *SMALL]) == 0
    for name in FIGURES:
        assert (one / f"{name}.csv").read_text() == (two / f"{name}.csv").read_text(), name


def test_default_plan_follows_the_trace(trace_file: Path) -> None:
    from herd.figures import make_plan

    prep = PreparedTrace(load_trace(trace_file))
    plan = make_plan(prep, Params())
    assert plan.seeds == 3  # a short trace: spread matters
    assert list(plan.memory_budgets) == sorted(plan.memory_budgets)
    assert plan.memory_budgets[-1] == plan.distinct_flows
    assert plan.message_budgets[0] > plan.hellos
    assert plan.memory_budgets[0] <= plan.fixed_memory <= plan.memory_budgets[-1]
    assert plan.message_budgets[0] <= plan.fixed_messages <= plan.message_budgets[-1]
    with pytest.raises(HerdInputError, match="epsilons"):
        make_plan(prep, Params(), epsilons=[0.0])
    with pytest.raises(HerdInputError, match="memory_budgets"):
        make_plan(prep, Params(), memory_budgets=[0, 10])


@pytest.mark.parametrize("bad", [["--epsilons", "0,0.1"], ["--memory-budgets", "0"],
                                 ["--seeds", "0"], ["--algorithm", "sampling"], ["--confirm"],
                                 ["--confirm-reports", "2"]])
def test_bad_input_exits_2(trace_file: Path, tmp_path: Path, bad: list[str],
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["figures", "--trace", str(trace_file), "--out", str(tmp_path / "x"),
                 *bad]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("herd: error: ") and "\n" not in err


def test_figures_with_epochs_add_the_per_epoch_figure(trace_file: Path, tmp_path: Path) -> None:
    """40k packets at 100k packets/s: 0.4 s, so 8 epochs of 50 ms. The budget figures hold
    their budgets per switch and epoch."""
    out = tmp_path / "epochs"
    assert main(["figures", "--trace", str(trace_file), "--out", str(out), "--workers", "1",
                 "--epoch-ms", "50", *SMALL]) == 0
    png = (out / "per_epoch.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    per_epoch = rows(out / "per_epoch.csv")
    assert len(per_epoch) == 8
    assert sum(int(r["packets"]) for r in per_epoch) == 40_000
    assert all(int(r["heavy_hitters"]) > 0 for r in per_epoch)
    meta = json.loads((out / "figures.json").read_text())
    assert meta["base_params"]["epoch_ms"] == 50 and "per_epoch.png" in meta["files"]
    for r in rows(out / "f1_vs_memory_budget.csv") + rows(out / "f1_vs_message_budget.csv"):
        if r["fits"] == "True":
            assert int(r["max_messages_per_switch"]) <= int(r["message_budget"]), r


def test_sweep_csv_carries_the_confirm_columns(trace_file: Path, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """``herd sweep --confirm`` sweeps C and writes confirm's costs; without --confirm the
    confirm-only columns stay empty; sweeping confirm itself gives both layouts' bytes."""
    out = tmp_path / "c.csv"
    assert main(["sweep", "--trace", str(trace_file), "--confirm", "--param",
                 "confirm_reports", "--values", "1,3", "--out", str(out)]) == 0
    table = rows(out)
    assert [r["confirm_reports"] for r in table] == ["1", "3"]
    for r in table:
        assert (r["confirm"], r["slot_bytes"], r["table_bytes_per_switch"]) == \
            ("True", "24", str(7168 * 24))
        assert int(r["confirm_candidates"]) >= int(r["confirmed"]) > 0
    # fewer candidates at C = 3, so a smaller pull (2 messages per 100 flows, per switch)
    assert int(table[0]["confirm_candidates"]) > int(table[1]["confirm_candidates"])
    assert int(table[0]["pull_messages"]) > int(table[1]["pull_messages"]) > 0
    on_off = tmp_path / "onoff.csv"
    assert main(["sweep", "--trace", str(trace_file), "--param", "confirm", "--values", "0,1",
                 "--out", str(on_off)]) == 0
    off, on = rows(on_off)
    assert (off["slot_bytes"], off["pull_messages"], off["confirm_candidates"]) == ("12", "0", "")
    assert on["slot_bytes"] == "24" and int(on["pull_messages"]) > 0
    assert int(on["messages"]) == int(off["messages"]) + int(on["pull_messages"])
    capsys.readouterr()
    assert main(["sweep", "--trace", str(trace_file), "--param", "confirm_reports",
                 "--values", "1,2", "--out", str(tmp_path / "x.csv")]) == 2
    assert "C only matters with --confirm" in capsys.readouterr().err

"""Replicate the paper's Tables 1-3 (and the OP-only ablation of its Section 5) with the five
experiment scripts, exactly as a user would run them, one subprocess per cell
(--jobs N: N cells at a time, each after the cells it needs).

This file holds the paper's numbers, the tables' captions and figures and the command line; the
plan (which cells, what each needs first) and its execution are in tools/replicate_plan.py.

    python replicate.py --table all --datasetDir DIR                 # everything, paper settings
    python replicate.py --table 2 --datasetDir DIR --dryRun         # print the commands only
    python replicate.py --table 1 --datasetDir DIR --epochs1 30 --epochs2 15 --epochsFlow 75 \\
        --epochsTwoStream 25 --extra "--trainBatchSize 8 --numWorkers 2"
    python replicate.py --table all --datasetDir DIR --crossval       # 4 leave-one-user-out splits
    python replicate.py --table all --datasetDir DIR --jobs 4 --devices cuda:0,cuda:1   # 4 cells at a time

Cells (one command each; outputs under --outDir, default experiments/replicate):

  shared/ego_rnn_stage1_seq<L>    main_rgb.py --stage 1                 Ego-RNN stage 1 (attention), shared by
                                                                      ConvLSTM-attention, MS, MS+OP, OP-only
  shared/convlstm_stage1_seq<L>   main_rgb.py --stage 1 --noAttention   stage 1 of the ConvLSTM row
  table1/convlstm_seq<L>          main_rgb.py --stage 2 --noAttention --lr 1e-4
  table1/attention_seq<L>         main_rgb.py --stage 2 --lr 1e-4
  table1/flow                     main_flow.py                          (clip length does not enter it: one
                                                                      run fills both columns of Table 1)
  table1/twostream_seq<L>         main_twostream.py --flowModel table1/flow --rgbModel table1/attention_seq<L>
  grid/<ms|ms_regression|ms_op>_seq<L>_lr<LR>   main_ms.py [--regression] | main_ms_op.py, --stage 2 --lr LR
  grid/op_only_seq<L>_lr1e-4      main_ms_op.py --noMS --stage 2 --lr 1e-4 (only when 1e-4 is in --lrs)

Every stage-2 command gets `--stage1Dict` pointing at the shared stage-1 `best_model.pth` of its clip
length. Every command gets `--resume`: the scripts then skip finished stages and continue unfinished
ones from `last.pth`. A cell whose result `summary.json` exists is not launched at all, so rerunning
the same replicate.py command continues where it stopped (a finished cell is not redone when the
epochs change: the tables say which epochs the cells used; delete a cell's folder to redo it). A failing cell is reported, the cells that
need it are skipped, the others go on; the exit status is 1 if any cell failed, 130 when interrupted.

Clip lengths: the paper's columns are 7 frames (Table 1 left, Table 2) and 16 frames (Table 1 right,
Table 3). `--seqLens` replaces them: a value 7 or 16 fills its own column, any other value fills the
next free column of the selected tables in the order 7, 16 (`--table 3 --seqLens 8` gives Table 3 at 8
frames). The tables print both our and the paper's clip length.

Epochs: by default each script's paper defaults (stage 1 300, stage 2 150, flow 750, two-stream 250).
With fewer epochs the lr milestones are scaled in proportion (stage 1 [25, 75, 150] of 300 -> 30 epochs:
[3, 8, 15]) and passed as `--stepSize`, unless `--paperMilestones`.

Outputs in --outDir: table1.md, table2.md, table3.md (the selected tables, in the paper's layout, with
the paper's number, our best-over-epochs and our final-epoch test accuracy side by side; "-" = not
run or not finished), tables.png, results.json (every cell: command, status, accuracies), logs/ (one
log per cell); `--tablesOnly` writes them from the finished cells without training. While it runs,
a progress line gives the cells done, the running cell(s), the elapsed time and an estimate of the
time left. With --crossval: crossval/test_S<k>/ per split (each with its own tables) and
crossval.md (mean and sample standard deviation over the splits per cell).

Dataset rule for the captions: a dataset is SYNTHETIC when (1) its folder holds the marker the
generator `python -m datasets.prepare.synthetic` writes last, `.complete`, a JSON object of the generator's
settings (layout, classes, ...), or (2) any top-level entry whose name starts with "synthetic" (any
case), or (3) the folder name itself starts with "synthetic". Otherwise the tables say GTEA-61. A
synthetic table says in its caption that its numbers are not GTEA-61 numbers.
"""
import argparse
import json
import math
import os
import shlex
import signal
import statistics
import sys

from datasets.markers import SYNTHETIC_MARKER  # noqa: F401  (re-exported)
from datasets.prepare.synthetic import dataset_kind
from tools.replicate_plan import (  # noqa: F401  (the plan's names, re-exported for the tests and users)
    FIXED_TEST, FIXED_TRAIN, GRID_TABLE_FRAMES, MANAGED, OP_ONLY_LR, PAPER_FRAMES, PAPER_LRS, PAPER_SCHEDULE,
    ROOT, SCRIPT_KIND, TABLE1_LR, USERS, Cell, Interrupted, UsageError, build_plan, command, epochs_args,
    execute, fmt_acc, fmt_lr, map_columns, run_cell, scaled_milestones, splits, validate, _selected_accuracy)
from utils.cli import HelpFormatter
from utils.paths import default_dataset_dir
from utils.errors import UserError
from utils.io import atomic_savefig, atomic_write_text


# The file datasets/prepare/synthetic.py writes last into a finished dataset: a JSON object of its settings.

TABLE1_ROWS = [("convlstm", "ConvLSTM"), ("attention", "ConvLSTM-attention"),
               ("flow", "Temporal-warp flow"), ("twostream", "Two stream (joint train)")]
PAPER_TABLE1 = {"convlstm": {7: 52.59, 16: 57.76}, "attention": {7: 56.9, 16: 64.66},
                "flow": {7: 42.24, 16: 42.24}, "twostream": {7: 64.66, 16: 68.10}}
GRID_ROWS = [("ms", "Ego-rnn + MS Task"), ("ms_regression", "Ego-rnn + regression MS Task"),
             ("ms_op", "Ego-rnn + MS Task + Order Task"),
             ("op_only", "Ego-rnn + Order Task (OP only, Sec. 5 ablation; no number in the paper)")]
PAPER_GRID = {  # Tables 2-3, % (the paper gives whole percents)
    7: {"ms": {"1e-3": 7, "1e-4": 56, "1e-5": 44}, "ms_regression": {"1e-3": 12, "1e-4": 51, "1e-5": 39},
        "ms_op": {"1e-3": 8, "1e-4": 57, "1e-5": 42}},
    16: {"ms": {"1e-3": 11, "1e-4": 65, "1e-5": 54}, "ms_regression": {"1e-3": 10, "1e-4": 62, "1e-5": 49},
         "ms_op": {"1e-3": 10, "1e-4": 66, "1e-5": 53}},
}
PAPER_TEST_VIDEOS = 116


# ----------------------------------------------------------------------------- dataset and tables

def _read_summary(cell):
    return cell.summary() if cell is not None and cell.finished() else None


def _same_path(a, b):
    return os.path.realpath(a) == os.path.realpath(b)


def build_tables(opts, tables, columns, cells, split_name, users, kind):
    """Table descriptions (shared by the markdown and the figure)."""
    slot_cell = {}
    for c in cells:
        for slot in c.slots:
            slot_cell[slot] = c
    lrs = list(PAPER_LRS) + [x for x in opts.lrs if not any(math.isclose(x, y) for y in PAPER_LRS)]
    lr_keys = [fmt_lr(x) for x in sorted(lrs, reverse=True)]
    out = []
    for t in tables:
        if t == 1:
            cols = [(p, None) for p in PAPER_FRAMES]
            rows = TABLE1_ROWS
            paper = lambda row, p, lk: PAPER_TABLE1[row].get(p)  # noqa: E731
        else:
            p = GRID_TABLE_FRAMES[t]
            cols = [(p, lk) for lk in lr_keys]
            rows = GRID_ROWS
            paper = lambda row, p, lk: PAPER_GRID[p].get(row, {}).get(lk)  # noqa: E731
        if opts.dataset == "egtea":  # the paper reports no EGTEA number
            paper = lambda row, p, lk: None  # noqa: E731
        col_specs = []
        for p, lk in cols:
            L = columns.get(p)
            if t == 1:
                label = f"{p} frames" if L in (None, p) else f"{p} frames (ours: {L})"
            else:
                label = f"lr {lk}"
            col_specs.append({"paper_frames": p, "lr": lk, "seqLen": L, "label": label})
        row_specs, shown = [], []
        for row, name in rows:
            values = []
            for p, lk in cols:
                cell = slot_cell.get((t, row, p, lk))
                s = _read_summary(cell)
                if cell is not None:
                    shown.append(cell)
                values.append({"paper": paper(row, p, lk), "cell": cell.key if cell else None,
                               "best": _selected_accuracy(s),
                               "final": s.get("final_test_accuracy") if s else None,
                               "best_epoch": s.get("selected_epoch", s.get("best_epoch")) if s else None,
                               "epochs": s.get("epochs") if s else None,
                               "test_videos": s.get("num_test_videos") if s else None})
            row_specs.append({"key": row, "label": name, "values": values})
        deps = {c.key: c for c in cells}
        for c in list(shown):
            shown += [deps[d] for d in c.deps if d in deps]
        shown = sorted({c.key: c for c in shown}.values(), key=lambda c: c.key)
        if t == 1:
            ours = [f"{columns[p]}" for p in PAPER_FRAMES if p in columns and columns[p] != p]
            title = "Table 1. Ego-RNN configurations, 7 and 16 frames" + (
                f" (ours: {' and '.join(str(columns.get(p, '-')) for p in PAPER_FRAMES)})" if ours else "")
        else:
            p = GRID_TABLE_FRAMES[t]
            L = columns.get(p)
            title = f"Table {t}. Stage-2 learning rate, {p} frames" + ("" if L == p else f" (ours: {L or '-'} frames)")
        out.append({"number": t, "title": title, "cells": [c.key for c in shown], "columns": col_specs, "rows": row_specs,
                    "paper": opts.dataset != "egtea", "dataset": opts.dataset,
                    "caption": _caption(opts, t, columns, shown, split_name, users, kind)})
    return out


SELECT_TEXT = {
    "test": "`best` = test accuracy of the epoch with the best test accuracy (what the paper reports; the model is "
            "picked on the test set, so it is optimistic, and under this protocol even the final accuracy of stage 2 "
            "and two-stream inherits stage 1's test-set selection)",
    "val": "`best` = test accuracy of the epoch picked on held-out training videos (`--select val`, "
           "{frac:.0%} of each class's training videos; stage 2 and two-stream start from val-selected models), "
           "independent of the test user",
    "last": "`best` = test accuracy of the last epoch (`--select last`: no selection; stage 2 and two-stream "
            "start from the last epoch of the models they build on)",
}


def _caption(opts, t, columns, shown, split_name, users, kind):
    dkind, reason = kind
    lines = []
    train, test = users if users else (FIXED_TRAIN, FIXED_TEST)
    if opts.dataset == "egtea":
        name = f"EGTEA Gaze+ split {opts.split}"
        lines.append(f"**Dataset: SYNTHETIC, in EGTEA Gaze+'s form** (`{opts.datasetDir}`; {reason}). **These numbers "
                     f"are not EGTEA Gaze+ numbers.**" if dkind == "synthetic" else
                     f"**Dataset: {name}** (`{opts.datasetDir}`). The paper reports no EGTEA number: no paper column.")
        lines.append(f"Train train_split{opts.split}.txt, test test_split{opts.split}.txt; `best` and `final` are "
                     f"action top-1 accuracies (evaluate.py adds mean class, verb and noun accuracy).")
    elif dkind == "synthetic":
        lines.append(f"**Dataset: SYNTHETIC** (`{opts.datasetDir}`; {reason}). **These numbers are not GTEA-61 "
                     f"numbers** and say nothing about the paper's results; the paper's columns are shown for the "
                     f"layout only.")
    else:
        lines.append(f"**Dataset: GTEA-61** (`{opts.datasetDir}`; {reason}).")
    if opts.dataset != "egtea":
        lines.append(f"Train {' '.join(train)}, test {' '.join(test)}"
                     + ("" if list(test) == ["S2"] else " (the paper's numbers are for the fixed split, test S2)") + ".")
    # clip lengths
    if t == 1:
        cl = ", ".join(f"{p}-frame column: ours {columns[p]}" for p in PAPER_FRAMES if p in columns)
        lines.append(f"Clip length ({cl or 'no column run'}). Stage-2 lr {fmt_lr(TABLE1_LR)} (paper default). "
                     f"The warp-flow stream reads one 5-frame flow stack whatever the clip length: one run fills "
                     f"both columns" + ("." if opts.dataset == "egtea" else " (the paper's 42.24 / 42.24)."))
    else:
        p = GRID_TABLE_FRAMES[t]
        L = columns.get(p)
        lines.append(f"Clip length: ours {L if L else '- (not run)'}, paper {p} frames. Stage 2 at each lr, from "
                     f"the shared Ego-RNN stage 1 (attention) at lr 1e-3.")
    # epochs actually used (from the results), else requested
    by_role = {}
    for c in shown:
        s = _read_summary(c)
        if s and s.get("epochs") is not None:
            by_role.setdefault(c.role, set()).add(int(s["epochs"]))
    parts = []
    roles = ["stage1", "stage2"] + (["flow", "twostream"] if t == 1 else [])
    names = {"stage1": "stage 1", "stage2": "stage 2", "flow": "flow", "twostream": "two-stream"}
    for role in roles:
        requested = {"stage1": opts.epochs1, "stage2": opts.epochs2, "flow": opts.epochsFlow,
                     "twostream": opts.epochsTwoStream}[role]
        paper = PAPER_SCHEDULE[role][0]
        used = by_role.get(role)
        if used:
            val = "/".join(str(x) for x in sorted(used)) + (" (cells differ)" if len(used) > 1 else "")
        else:
            val = f"{requested or paper} requested, none finished"
        parts.append(f"{names[role]}: {val}" + ("" if used == {paper} else f" (paper {paper})"))
    lines.append("Epochs: " + "; ".join(parts) + "."
                 + ("" if opts.paperMilestones or not any(
                     x is not None for x in (opts.epochs1, opts.epochs2, opts.epochsFlow))
                    else " Lr milestones scaled with the epochs."))
    if opts.extra:
        lines.append(f"Options given to every script: `{opts.extra}`.")
    ntest = sorted({int(s["num_test_videos"]) for s in (_read_summary(c) for c in shown)
                    if s and s.get("num_test_videos") is not None})
    if ntest:
        lines.append(f"Test videos: {'/'.join(map(str, ntest))} ("
                     + ("" if opts.dataset == "egtea" else f"the paper's S2: {PAPER_TEST_VIDEOS}; ")
                     + f"one video = {100 / ntest[0]:.2f} points).")
    precisions = sorted({s["precision"] for s in (_read_summary(c) for c in shown) if s and s.get("precision")})
    if precisions:
        lines.append(f"Precision: {'/'.join(precisions)}" + (" (cells differ)" if len(precisions) > 1 else "")
                     + ", in training and in its test evaluations; evaluate.py evaluates the checkpoints in the same "
                     "precision by default, so it prints these accuracies.")
    other = sorted({s.get("dataset") for s in (_read_summary(c) for c in shown)
                    if s and s.get("dataset") and not _same_path(s["dataset"], opts.datasetDir)})
    if other:
        lines.append(f"**Warning:** some cells were trained on another dataset folder ({', '.join(other)}).")
    for c in shown:
        s = _read_summary(c) if c.role == "stage1" else None
        if s:
            lines.append(f"Stage 1 `{c.key}`: best {fmt_acc(_selected_accuracy(s))}, "
                         f"final {fmt_acc(s.get('final_test_accuracy'))}.")
    selects = sorted({s.get("select", "test") for s in (_read_summary(c) for c in shown) if s})
    if len(selects) > 1:
        lines.append(f"**Warning:** the cells selected their epoch differently ({', '.join(selects)}).")
    lines.append(f"Selection: {opts.select}. " + SELECT_TEXT[opts.select].format(frac=opts.valFraction)
                 + "; `final` = test accuracy after the last epoch. Accuracy in %; `-` = not run or not finished.")
    if t != 1:  # the MS+OP rows
        lines.append(f"Order-prediction head input: {opts.opInput} "
                     + ("(fc6 reads the flattened 512 x s x s layer4 map, as the paper's code)." if opts.opInput == "flat"
                        else "(fc6 reads the pooled 512-d layer4 features; not the paper's)."))
    return lines


def table_markdown(tab, cells):
    t = tab["number"]
    title = tab["title"]
    out = [f"# {title} (replication)", ""] + [ln + "  " for ln in tab["caption"]] + [""]
    first = "Configuration" if t == 1 else "Configurations/LR"
    header = [first]
    with_paper = tab.get("paper", True)
    for c in tab["columns"]:
        header += ([f"{c['label']}: paper"] if with_paper else []) + [f"{c['label']}: best", f"{c['label']}: final"]
    out.append("| " + " | ".join(header) + " |")
    out.append("|---" + "|---:" * (len(header) - 1) + "|")
    for row in tab["rows"]:
        vals = []
        for v in row["values"]:
            paper = "-" if v["paper"] is None else (f"{v['paper']:.2f}" if t == 1 else f"{v['paper']}")
            vals += ([paper] if with_paper else []) + [fmt_acc(v["best"]), fmt_acc(v["final"])]
        out.append("| " + " | ".join([row["label"]] + vals) + " |")
    notes = []
    keys = tab["cells"]
    by_key = {c.key: c for c in cells}
    for k in keys:
        c = by_key[k]
        if not c.finished():
            why = c.status or "not run"
            notes.append(f"- `{k}`: {why}{': ' + c.message if c.message else ''}")
    if notes:
        out += ["", "Not finished:"] + notes
    if keys:
        out += ["", "Cells (outputs in `<outDir>/<cell>/stage<N>/`, commands in `results.json`): "
                + ", ".join(f"`{k}`" for k in keys) + "."]
    out.append("")
    return "\n".join(out)


def atomic_write(path, text):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    atomic_write_text(path, text)


def plot_tables(tabs, path, kind):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(len(tabs), 1, figsize=(13, 4.2 * len(tabs)), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = [("paper", dict(alpha=0.35, hatch="//")), ("best", dict(alpha=0.95)), ("final", dict(alpha=0.6))]
    for ax, tab in zip(axes[:, 0], tabs):
        rows, cols = tab["rows"], tab["columns"]
        styles_here = [s for s in styles if s[0] != "paper" or tab.get("paper", True)]
        nser = len(cols) * len(styles_here)
        width = 0.84 / nser
        x = np.arange(len(rows))
        for j, col in enumerate(cols):
            for k, (src, style) in enumerate(styles_here):
                vals = [r["values"][j][src] for r in rows]
                vals = np.array([np.nan if v is None else float(v) for v in vals])
                pos = x + (j * len(styles_here) + k - (nser - 1) / 2) * width
                ax.bar(pos, np.nan_to_num(vals, nan=0.0), width, color=colors[j % len(colors)],
                       edgecolor="black", linewidth=0.3, label=f"{col['label']} {src}", **style)
                for xp, v in zip(pos, vals):
                    if np.isnan(v):
                        ax.text(xp, 1, "-", ha="center", va="bottom", fontsize=6)
        ax.set_xticks(x)
        ax.set_xticklabels([r["label"].split(" (")[0] for r in rows], fontsize=8)
        ax.set_ylabel("test accuracy (%)")
        ax.set_ylim(0, 100)
        title = tab["title"].split(". ", 1)[0] + ": " + tab["title"].split(". ", 1)[1]
        if kind[0] == "synthetic":
            name = "EGTEA Gaze+" if tab.get("dataset") == "egtea" else "GTEA-61"
            title += f"  -  SYNTHETIC DATA: not {name} numbers"
        elif tab.get("dataset") == "egtea":
            title += "  -  EGTEA Gaze+ (no paper numbers)"
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=6, ncol=len(cols), loc="upper left")
    fig.tight_layout()
    try:
        atomic_savefig(fig, path, dpi=110)
    finally:
        plt.close(fig)


def write_split_outputs(opts, tables, columns, cells, split_name, split_dir, users, kind, figure=True):
    tabs = build_tables(opts, tables, columns, cells, split_name, users, kind)
    for tab in tabs:
        atomic_write(os.path.join(split_dir, f"table{tab['number']}.md"), table_markdown(tab, cells))
    results = {"dataset": opts.datasetDir, "dataset_kind": kind[0], "dataset_rule": kind[1],
               "train_users": list(users[0]) if users else list(FIXED_TRAIN),
               "test_users": list(users[1]) if users else list(FIXED_TEST),
               "cells": [{"key": c.key, "command": shlex.join(command(c, opts.extra_args)),
                          "status": c.status or ("finished" if c.finished() else "not run"),
                          "message": c.message, "summary": _read_summary(c)} for c in cells],
               "tables": tabs}
    atomic_write(os.path.join(split_dir, "results.json"), json.dumps(results, indent=2) + "\n")
    if figure:
        plot_tables(tabs, os.path.join(split_dir, "tables.png"), kind)
    return tabs


def write_crossval(opts, per_split, kind):
    """crossval.md: per cell, the 4 splits' best accuracies and mean/sample std of best and final."""
    lines = ["# Leave-one-user-out cross-validation (replication)", ""]
    if kind[0] == "synthetic":
        lines.append(f"**Dataset: SYNTHETIC** (`{opts.datasetDir}`; {kind[1]}). **These numbers are not GTEA-61 "
                     f"numbers.**  ")
    else:
        lines.append(f"**Dataset: GTEA-61** (`{opts.datasetDir}`; {kind[1]}).  ")
    lines += ["Split `test Sk` trains on the other three users. `mean ± std` over the finished splits (sample "
              "standard deviation, n-1); `best` = best test accuracy over epochs (optimistic, as the paper), "
              "`final` = last epoch. The paper reports only the fixed split (test S2); for context, reference "
              "4-split means on GTEA-61: Ego-RNN two-stream 79.00, LSTA two-stream 80.01, SparNet (MS) 80.30.  ",
              f"Epochs: stage 1 {opts.epochs1 or 300}, stage 2 {opts.epochs2 or 150}, flow {opts.epochsFlow or 750}, "
              f"two-stream {opts.epochsTwoStream or 250} (requested)."
              + (f" Options given to every script: `{opts.extra}`." if opts.extra else ""), ""]
    names = [name for name, _, _ in per_split]
    header = ["Table", "Configuration", "Column", "paper (S2)"] + [f"test {n}: best" for n in names] + \
             ["n", "best: mean ± std", "final: mean ± std"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|---|---|---" + "|---:" * (len(header) - 3) + "|")
    first_tabs = per_split[0][2]
    for ti, tab in enumerate(first_tabs):
        for ri, row in enumerate(tab["rows"]):
            for ci, col in enumerate(tab["columns"]):
                vals = [tabs[ti]["rows"][ri]["values"][ci] for _, _, tabs in per_split]
                if all(v["cell"] is None for v in vals):
                    continue
                best = [v["best"] for v in vals if v["best"] is not None]
                final = [v["final"] for v in vals if v["final"] is not None]
                paper = vals[0]["paper"]
                label = col["label"] + (f" ({col['seqLen']} frames)" if tab["number"] != 1 and col["seqLen"] else "")
                lines.append("| " + " | ".join(
                    [str(tab["number"]), row["label"], label, "-" if paper is None else f"{paper}"]
                    + [fmt_acc(v["best"]) for v in vals]
                    + [str(len(best)), _mean_std(best), _mean_std(final)]) + " |")
    lines.append("")
    atomic_write(os.path.join(opts.outDir, "crossval.md"), "\n".join(lines))


def _mean_std(xs):
    if not xs:
        return "-"
    if len(xs) == 1:
        return f"{xs[0]:.2f} ± -"
    return f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}"


# ----------------------------------------------------------------------------- main

class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes are one line `error: ...` (exit 2), as the scripts' other errors."""

    def error(self, message):
        raise UsageError(message)


def parse_args(argv):
    p = _Parser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--table", required=True, choices=["1", "2", "3", "all"], help="the paper's table to replicate, or all three")
    p.add_argument("--datasetDir", default=None, help="GTEA-61 root (course layout for the MS cells); default: "
                   "$GTEA61_DIR, else data/GTEA61, else make demo's data/synthetic_gtea61")
    p.add_argument("--outDir", default="experiments/replicate", help="one folder per cell inside, the tables beside them")
    p.add_argument("--epochs1", type=int, default=None, help="stage-1 epochs (default: the paper's 300)")
    p.add_argument("--epochs2", type=int, default=None, help="stage-2 epochs (default: the paper's 150)")
    p.add_argument("--epochsFlow", type=int, default=None, help="flow epochs (default: 750)")
    p.add_argument("--epochsTwoStream", type=int, default=None, help="two-stream epochs (default: 250)")
    p.add_argument("--paperMilestones", action="store_true",
                   help="keep the paper's lr milestones when the epochs are reduced (default: scale them)")
    p.add_argument("--frameSize", type=int, default=None, help="passed to every script (default: theirs, 224)")
    p.add_argument("--seqLens", type=int, nargs="+", default=None,
                   help="clip lengths replacing the paper's 7 and 16 (default: those of the selected tables)")
    p.add_argument("--lrs", type=float, nargs="+", default=list(PAPER_LRS), help="stage-2 lrs of Tables 2-3")
    p.add_argument("--seed", type=int, default=None, help="passed to every script (default: theirs, 0)")
    p.add_argument("--select", choices=["test", "val", "last"], default="test",
                   help="epoch selection of every run (see the scripts' --select); test is the paper's protocol")
    p.add_argument("--valFraction", type=float, default=0.15, help="--select val: held-out share of the training videos")
    p.add_argument("--opInput", choices=["flat", "pooled"], default="flat",
                   help="order-prediction head input of the MS+OP cells (flat: the paper's)")
    p.add_argument("--pretrained", default=None, help="imagenet | none | PATH, passed to every script")
    p.add_argument("--extra", default="", help='more arguments for every script, e.g. "--trainBatchSize 8 --numWorkers 2"')
    p.add_argument("--crossval", action="store_true", help="the 4 leave-one-user-out splits, with crossval.md")
    p.add_argument("--dataset", choices=["gtea61", "egtea"], default="gtea61",
                   help="egtea: a root prepared by datasets.prepare --egtea (--datasetDir required), split --split")
    p.add_argument("--split", type=int, choices=[1, 2, 3], default=None, help="--dataset egtea: the split (default 1)")
    p.add_argument("--jobs", type=int, default=1,
                   help="cells run at the same time, each as soon as the cells it needs are done (tables identical "
                        "to --jobs 1; on the CPU each cell gets cores/jobs threads unless OMP_NUM_THREADS is set)")
    p.add_argument("--devices", default=None,
                   help="comma-separated devices the jobs go round, e.g. cuda:0,cuda:1 (--jobs 4: two cells per GPU) "
                        "or cpu; default: every cell sees what replicate.py sees")
    p.add_argument("--dryRun", dest="dry_run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--tablesOnly", action="store_true",
                   help="write the tables from the cells finished in --outDir, train nothing")
    p.add_argument("--verbose", action="store_true", help="show the scripts' output (always in <outDir>/logs/)")
    p.add_argument("--quiet", action="store_true",
                   help="print only failed or skipped cells and where the tables are (each cell's output is in "
                        "<outDir>/logs/)")
    opts = p.parse_args(argv)
    if opts.quiet and opts.verbose:
        raise UsageError("--quiet and --verbose exclude each other")
    if opts.dataset == "egtea":
        if opts.datasetDir is None or opts.crossval:
            raise UsageError("--dataset egtea needs --datasetDir (a root prepared by datasets.prepare --egtea) and "
                             "takes --split 1|2|3 instead of --crossval")
        opts.split = opts.split or 1
    elif opts.split is not None:
        raise UsageError(f"--split {opts.split} applies to --dataset egtea")
    if opts.datasetDir is None:
        try:  # --dryRun keeps stdout for the commands
            opts.datasetDir = default_dataset_dir(lambda m: print(m, file=sys.stderr if opts.dry_run else sys.stdout))
        except UserError as e:
            raise UsageError(str(e)) from None
    for name in ("epochs1", "epochs2", "epochsFlow", "epochsTwoStream", "frameSize"):
        v = getattr(opts, name)
        if v is not None and v <= 0:
            raise UsageError(f"--{name} must be positive (got {v})")
    if any(lr <= 0 for lr in opts.lrs):
        raise UsageError("--lrs must be positive")
    if opts.jobs < 1:
        raise UsageError(f"--jobs must be at least 1 (got {opts.jobs})")
    if opts.devices is not None:
        opts.devices = [d.strip() for d in opts.devices.split(",") if d.strip()]
        bad = [d for d in opts.devices if not (d == "cpu" or (d.startswith("cuda:") and d[5:].isdigit()))]
        if bad or not opts.devices:
            raise UsageError(f"--devices {','.join(bad) or '(empty)'}: give devices as cuda:N or cpu, comma-separated")
    lrs = []
    for lr in opts.lrs:
        if not any(math.isclose(lr, x) for x in lrs):
            lrs.append(lr)
    opts.lrs = lrs
    try:
        opts.extra_args = shlex.split(opts.extra)
    except ValueError as e:
        raise UsageError(f"--extra: {e}") from None
    for tok in opts.extra_args:
        if not tok.startswith("--"):
            continue
        name = tok.split("=")[0]
        hit = [m for m in MANAGED if m == name or (len(name) > 3 and m.startswith(name))]
        if hit:
            raise UsageError(f"--extra must not set {hit[0]}: replicate.py sets it for each cell")
        for own in ("--frameSize", "--pretrained", "--seed"):
            if own.startswith(name) and len(name) > 3 and getattr(opts, own[2:]) is not None:
                raise UsageError(f"{own} is given both to replicate.py and in --extra; give it once")
    return opts


def _sigterm(signum, frame):
    """SIGTERM stops like Ctrl-C: the running script is told to stop, the tables are written."""
    raise KeyboardInterrupt()


def main(argv=None):
    opts = parse_args(argv)
    tables = [1, 2, 3] if opts.table == "all" else [int(opts.table)]
    columns = map_columns(tables, opts.seqLens)
    plan = [(name, d, users, build_plan(opts, tables, columns, d, users)) for name, d, users in splits(opts)]
    all_cells = [c for *_, cells in plan for c in cells]
    if not all_cells:
        raise UsageError("nothing to run: no clip length is mapped to the selected table(s)")
    validate(all_cells, opts.extra_args)

    if opts.dry_run:
        for *_, cells in plan:
            for c in cells:
                print(shlex.join(command(c, opts.extra_args)))
        done = sum(c.finished() for c in all_cells)
        print(f"# {len(all_cells)} commands (run from {os.getcwd()}); {done} finished already, would be skipped",
              file=sys.stderr)
        return 0

    if not os.path.isdir(opts.datasetDir):
        raise UsageError(f"--datasetDir {opts.datasetDir}: no such folder")
    kind = dataset_kind(opts.datasetDir)
    if opts.tablesOnly:
        return _tables_only(opts, tables, columns, plan, all_cells, kind)
    os.makedirs(opts.outDir, exist_ok=True)
    with open(os.path.join(opts.outDir, ".replicate.lock"), "w") as lock:
        try:
            import fcntl
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:
            pass
        except OSError:
            raise UsageError(f"another replicate.py is running on {opts.outDir}; wait for it or use another "
                             f"--outDir") from None
        return _run(opts, tables, columns, plan, all_cells, kind)


def _tables_only(opts, tables, columns, plan, all_cells, kind):
    """The tables of the same command's cells, from their summary.json files, without training."""
    per_split = []
    for name, split_dir, users, cells in plan:
        os.makedirs(split_dir, exist_ok=True)
        per_split.append((name, split_dir, write_split_outputs(opts, tables, columns, cells, name, split_dir,
                                                               users, kind)))
    if opts.crossval:
        write_crossval(opts, per_split, kind)
    where = os.path.join(opts.outDir, "crossval.md") if opts.crossval else \
        ", ".join(os.path.join(opts.outDir, f"table{t}.md") for t in tables)
    print(f"{sum(c.finished() for c in all_cells)}/{len(all_cells)} cells finished; tables: {where}")
    return 0


def _run(opts, tables, columns, plan, all_cells, kind):
    if not opts.quiet:
        print(f"dataset {opts.datasetDir}: {kind[0]} ({kind[1]}); output {opts.outDir}")
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _sigterm)
    interrupted = False
    per_split = []
    try:
        for name, split_dir, users, cells in plan:
            if opts.crossval and not opts.quiet:
                print(f"--- split test {name} ({split_dir})")

            def progress(cells=cells, split_dir=split_dir, users=users, name=name):
                write_split_outputs(opts, tables, columns, cells, name, split_dir, users, kind, figure=False)

            try:
                execute(cells, opts.extra_args, os.path.join(split_dir, "logs"), opts.verbose, progress,
                        opts.jobs, opts.devices, opts.quiet)
            except Interrupted:
                interrupted = True
            per_split.append((name, split_dir, write_split_outputs(opts, tables, columns, cells, name, split_dir,
                                                                   users, kind)))
            if interrupted:
                break
    finally:
        signal.signal(signal.SIGTERM, previous)
    if opts.crossval and per_split:
        write_crossval(opts, per_split + [(n, d, build_tables(opts, tables, columns, c, n, u, kind))
                                          for n, d, u, c in plan[len(per_split):]], kind)

    failed = [c for c in all_cells if c.status in ("failed", "skipped")]
    where = os.path.join(opts.outDir, "crossval.md") if opts.crossval else \
        ", ".join(os.path.join(opts.outDir, f"table{t}.md") for t in tables)
    print(f"tables: {where}")
    if interrupted:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130
    if failed:
        print(f"{len(failed)} cell(s) did not finish:", file=sys.stderr)
        for c in failed:
            print(f"  {c.key}: {c.status}: {c.message}", file=sys.stderr)
        return 1
    return 0


def cli(argv=None):
    """main() with the project's error convention: one line `error: ...` and exit status 2."""
    try:
        return main(argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(cli())

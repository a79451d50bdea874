"""The plan of replicate.py and its execution: the cells (one script command each), what each
cell needs first, and running them, resumably.

A cell is one command of one experiment script, writing one stage folder. `build_plan` turns the
selected tables, clip lengths and learning rates into cells, every cell after the cells it needs
(a stage 2 after the stage 1 it starts from, the two-stream cell after its flow and RGB models);
`execute` runs them as subprocesses, exactly as a user would, skipping finished ones. What the
tables show (the paper's numbers, captions, figures) is replicate.py's business, not this module's.
"""
import contextlib
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

from models.recipe import DEFAULTS, TEST_USERS, TRAIN_USERS, USERS
from utils.arguments import base_parser, check_args
from utils.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXED_TRAIN, FIXED_TEST = TRAIN_USERS, TEST_USERS
PAPER_FRAMES = (7, 16)
GRID_TABLE_FRAMES = {2: 7, 3: 16}                   # Table 2 = 7 frames, Table 3 = 16 frames
PAPER_LRS = (1e-3, 1e-4, 1e-5)
TABLE1_LR = 1e-4                                    # stage-2 lr of Table 1: the paper default
OP_ONLY_LR = 1e-4

# The paper's schedules (models/recipe.py): (epochs, lr milestones). Two-stream decays every
# epoch (StepLR(1, 0.99)): nothing to scale.
PAPER_SCHEDULE = {role: (DEFAULTS[family][stage]["numEpochs"], DEFAULTS[family][stage]["stepSize"])
                  for role, family, stage in (("stage1", "rgb", 1), ("stage2", "rgb", 2), ("flow", "flow", 1))}
PAPER_SCHEDULE["twostream"] = (DEFAULTS["twostream"][1]["numEpochs"], None)

# Arguments replicate.py sets itself: not allowed in --extra.
MANAGED = ("--stage", "--datasetDir", "--outDir", "--seqLen", "--lr", "--numEpochs", "--stepSize",
           "--stage1Dict", "--flowModel", "--rgbModel", "--trainUsers", "--testUsers", "--resume",
           "--overwrite", "--noAttention", "--regression", "--noMS", "--select", "--valFraction", "--opInput",
           "--dataset", "--split")
SCRIPT_KIND = {"main_rgb.py": "rgb", "main_flow.py": "flow", "main_twostream.py": "twostream",
               "main_ms.py": "ms", "main_ms_op.py": "ms_op"}


class UsageError(Exception):
    """A wrong argument: one line `error: ...`, exit 2."""


class Interrupted(Exception):
    pass


def fmt_lr(lr):
    """1e-4 -> '1e-4', 2.5e-4 -> '2.5e-4' (used in folder names, commands and tables)."""
    mantissa, exponent = f"{lr:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def fmt_acc(x):
    return "-" if x is None else f"{x:.2f}"


def scaled_milestones(milestones, epochs, paper_epochs):
    """The paper's milestones scaled to a shorter run (at least epoch 1, no duplicates)."""
    return sorted({max(1, int(m * epochs / paper_epochs + 0.5)) for m in milestones})


def _selected_accuracy(s):
    """Test accuracy of the epoch the run selected (older summaries: the best test accuracy)."""
    if not s:
        return None
    return s.get("selected_test_accuracy", s.get("best_test_accuracy"))


# ----------------------------------------------------------------------------- the plan

class Cell:
    """One command: a script, its arguments, the folder it writes, the cells it needs."""

    def __init__(self, key, script, args, out_dir, stage, deps=(), role=None, slots=()):
        self.key, self.script, self.args, self.out_dir = key, script, list(args), out_dir
        self.stage, self.deps, self.role = stage, list(deps), role
        self.slots = list(slots)          # table positions it fills: (table, row, paper_frames, lr_key)
        self.status, self.message = None, ""

    @property
    def result_dir(self):
        return os.path.join(self.out_dir, f"stage{self.stage}")

    @property
    def summary_path(self):
        return os.path.join(self.result_dir, "summary.json")

    def finished(self):
        return os.path.isfile(self.summary_path)

    def summary(self):
        try:
            with open(self.summary_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def argv(self, extra):
        return [self.script] + self.args + list(extra)


def map_columns(tables, seq_lens):
    """{paper frames (7 or 16): our seqLen} for the columns the selected tables need."""
    needed = [p for p in PAPER_FRAMES
              if 1 in tables or any(GRID_TABLE_FRAMES[t] == p for t in tables if t in GRID_TABLE_FRAMES)]
    if seq_lens is None:
        return {p: p for p in needed}
    if len(set(seq_lens)) != len(seq_lens):
        raise UsageError(f"--seqLens {' '.join(map(str, seq_lens))}: a clip length is given twice")
    if any(L <= 0 for L in seq_lens):
        raise UsageError("--seqLens must be positive")
    if len(seq_lens) > len(needed):
        names = " and ".join(f"{p} frames" for p in needed)
        raise UsageError(f"--seqLens {' '.join(map(str, seq_lens))}: the selected table(s) have "
                         f"{len(needed)} clip-length column(s) ({names}); give at most {len(needed)} value(s)")
    mapping, rest = {}, []
    for L in seq_lens:
        (mapping.__setitem__(L, L) if L in needed and L not in mapping else rest.append(L))
    free = [p for p in needed if p not in mapping]
    for L, p in zip(rest, free):
        mapping[p] = L
    return dict(sorted(mapping.items()))


def epochs_args(opts, role):
    """--numEpochs / --stepSize for a role, from --epochs1/2/Flow/TwoStream (nothing: paper default)."""
    value = {"stage1": opts.epochs1, "stage2": opts.epochs2, "flow": opts.epochsFlow,
             "twostream": opts.epochsTwoStream}[role]
    if value is None:
        return []
    args = ["--numEpochs", str(value)]
    paper_epochs, milestones = PAPER_SCHEDULE[role]
    if milestones and value < paper_epochs and not opts.paperMilestones:
        args += ["--stepSize"] + [str(m) for m in scaled_milestones(milestones, value, paper_epochs)]
    return args


def build_plan(opts, tables, columns, split_dir, users=None):
    """Cells of one split, in the order they run (every cell after the cells it needs)."""
    cells = {}

    def common(out_dir, role):
        a = ["--datasetDir", opts.datasetDir, "--outDir", out_dir]
        tail = epochs_args(opts, role)
        if users is not None:
            tail += ["--trainUsers", *users[0], "--testUsers", *users[1]]
        if opts.dataset == "egtea":
            tail += ["--dataset", "egtea", "--split", str(opts.split)]
        if opts.frameSize is not None:
            tail += ["--frameSize", str(opts.frameSize)]
        if opts.pretrained is not None:
            tail += ["--pretrained", opts.pretrained]
        if opts.seed is not None:
            tail += ["--seed", str(opts.seed)]
        tail += ["--select", opts.select] + (["--valFraction", str(opts.valFraction)] if opts.select == "val" else [])
        return a, tail + ["--resume"]

    def add(key, script, middle, stage, role, deps=(), slot=None):
        if key not in cells:
            out_dir = os.path.join(split_dir, key)
            head, tail = common(out_dir, role)
            if script == "main_ms_op.py":
                middle = middle + ["--opInput", opts.opInput]
            cells[key] = Cell(key, script, head + middle + tail, out_dir, stage, deps, role)
        if slot is not None:
            cells[key].slots.append(slot)
        return cells[key]

    def stage1(L, attention):
        name = "ego_rnn" if attention else "convlstm"
        middle = ["--stage", "1", "--seqLen", str(L)] + ([] if attention else ["--noAttention"])
        return add(f"shared/{name}_stage1_seq{L}", "main_rgb.py", middle, 1, "stage1")

    def stage2_middle(L, lr, s1):
        best = os.path.join(s1.result_dir, "best_model.pth")
        return ["--stage", "2", "--seqLen", str(L), "--lr", fmt_lr(lr), "--stage1Dict", best]

    if 1 in tables:
        flow = None
        for p, L in columns.items():
            # the attention chain first: its stage 1 is shared with Tables 2-3
            s1a = stage1(L, True)
            att = add(f"table1/attention_seq{L}", "main_rgb.py", stage2_middle(L, TABLE1_LR, s1a), 2, "stage2",
                      [s1a.key], (1, "attention", p, None))
            flow = add("table1/flow", "main_flow.py", [], 1, "flow", (), (1, "flow", p, None))
            middle = ["--seqLen", str(L), "--flowModel", os.path.join(flow.result_dir, "best_model.pth"),
                      "--rgbModel", os.path.join(att.result_dir, "best_model.pth")]
            add(f"table1/twostream_seq{L}", "main_twostream.py", middle, 1, "twostream", [flow.key, att.key],
                (1, "twostream", p, None))
            s1n = stage1(L, False)
            add(f"table1/convlstm_seq{L}", "main_rgb.py", stage2_middle(L, TABLE1_LR, s1n) + ["--noAttention"],
                2, "stage2", [s1n.key], (1, "convlstm", p, None))
    for table in (2, 3):
        p = GRID_TABLE_FRAMES[table]
        if table not in tables or p not in columns:
            continue
        L = columns[p]
        s1a = stage1(L, True)
        for lr in opts.lrs:
            lk = fmt_lr(lr)
            for row, script, flags in (("ms", "main_ms.py", []), ("ms_regression", "main_ms.py", ["--regression"]),
                                       ("ms_op", "main_ms_op.py", [])):
                add(f"grid/{row}_seq{L}_lr{lk}", script, stage2_middle(L, lr, s1a) + flags, 2, "stage2",
                    [s1a.key], (table, row, p, lk))
        if any(math.isclose(lr, OP_ONLY_LR) for lr in opts.lrs):
            lk = fmt_lr(OP_ONLY_LR)
            add(f"grid/op_only_seq{L}_lr{lk}", "main_ms_op.py", stage2_middle(L, OP_ONLY_LR, s1a) + ["--noMS"],
                2, "stage2", [s1a.key], (table, "op_only", p, lk))
    return list(cells.values())


def splits(opts):
    """(name, folder, users or None) of each split: the fixed one, or the 4 leave-one-user-out ones."""
    if not opts.crossval:
        return [("S2", opts.outDir, None)]
    out = []
    for test in USERS:
        train = [u for u in USERS if u != test]
        out.append((test, os.path.join(opts.outDir, "crossval", f"test_{test}"), (train, [test])))
    return out


def validate(cells, extra):
    """Parse every command with its script's own parser before running anything."""
    seen = set()
    for cell in cells:
        kind = SCRIPT_KIND[cell.script]
        argv = cell.args + list(extra)
        if (kind, tuple(argv)) in seen:
            continue
        seen.add((kind, tuple(argv)))
        parser = base_parser(kind, "")
        err = _Capture()
        with contextlib.redirect_stderr(err):
            try:
                args = parser.parse_args(argv)
            except SystemExit:
                last = [ln for ln in err.text.splitlines() if ln.strip()]
                msg = last[-1] if last else "invalid arguments"
                raise UsageError(f"{cell.script} refuses the arguments of cell {cell.key} "
                                 f"({msg.split('error: ', 1)[-1]}); check --extra") from None
        try:
            check_args(kind, args)
        except UserError as e:
            raise UsageError(f"cell {cell.key} ({cell.script}): {e}") from None


class _Capture:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


# ----------------------------------------------------------------------------- running

def script_path(name):
    path = os.path.join(ROOT, name)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def command(cell, extra):
    return [sys.executable, script_path(cell.script)] + cell.args + list(extra)


def _die_with_parent():
    """Child: receive SIGTERM if replicate.py dies (Linux), so no orphan keeps training."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def run_cell(cell, extra, log_dir, verbose, env_extra=None, procs=None):
    """Run one cell; returns (exit status, last error line, log path). Raises Interrupted on
    Ctrl-C (in the main thread; a cell run in a worker thread is stopped by `execute`).
    env_extra: environment of this cell (its device); procs: {cell key: process} while it runs."""
    cmd = command(cell, extra)
    os.makedirs(log_dir, exist_ok=True)
    log_path = os.path.join(log_dir, cell.key.replace("/", "__") + ".log")
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env_extra or {}))
    if not verbose:
        env["TQDM_DISABLE"] = "1"          # per-epoch lines only, no progress bars in the logs
    tail = b""
    with open(log_path, "ab") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')}  {shlex.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        if procs is not None:
            procs[cell.key] = proc
        try:
            while True:
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                log.write(chunk)
                log.flush()
                if verbose:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.buffer.flush()
                tail = (tail + chunk)[-8192:]
            rc = proc.wait()
        except KeyboardInterrupt:
            # A Ctrl-C in a terminal reached the script too (same process group); a SIGTERM to
            # replicate.py did not: then tell it to stop the same way. Its files are written atomically.
            for sig, timeout in ((None, 3), (signal.SIGINT, 120), (signal.SIGKILL, None)):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                try:
                    rest, _ = proc.communicate(timeout=timeout)  # keeps the script's last words in the log
                    log.write(rest or b"")
                    break
                except subprocess.TimeoutExpired:
                    continue
            raise Interrupted() from None
        finally:
            proc.stdout.close()
            if procs is not None:
                procs.pop(cell.key, None)
    lines = [ln.strip() for ln in tail.decode(errors="replace").replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln.split(":")[0]]
    message = errors[-1] if errors else (lines[-1] if lines else "")
    return rc, message, log_path


def device_env(devices, slot, jobs):
    """Environment of the cell run in job slot `slot`: its device (slots go round the devices,
    so --jobs 4 --devices cuda:0,cuda:1 puts two cells on each GPU), and on the CPU a share of
    the cores (jobs > 1), so that parallel cells do not fight over them."""
    env = {}
    if devices:
        d = devices[slot % len(devices)]
        env["CUDA_VISIBLE_DEVICES"] = "" if d == "cpu" else d.split(":")[-1]
    if jobs > 1 and "OMP_NUM_THREADS" not in os.environ:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    return env


def cell_epochs(cell):
    """The epochs a cell trains: its --numEpochs, else its script's paper default."""
    if "--numEpochs" in cell.args:
        return int(cell.args[cell.args.index("--numEpochs") + 1])
    return PAPER_SCHEDULE[cell.role][0]


def _clock(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(cells, running, elapsed, trained_epochs):
    """`progress: cells done / total, the running cells, elapsed, time left`. The time left is
    elapsed x (epochs still to train / epochs trained in this run): cells weigh by their epochs
    (a 750-epoch flow cell counts 5 stage-2 cells of 150), a running cell counts in full."""
    done = [c for c in cells if c.status in ("done", "finished earlier")]
    to_train = sum(cell_epochs(c) for c in cells if c.status is None or c.key in running)
    left = f"about {_clock(elapsed * to_train / trained_epochs)} left" if trained_epochs else \
        "time left: known when a cell has finished"
    return (f"progress: {len(done)}/{len(cells)} cells done, running {', '.join(running) or 'nothing'}, "
            f"elapsed {_clock(elapsed)}, {left}")


def execute(cells, extra, log_dir, verbose, on_progress, jobs=1, devices=None, quiet=False):
    """Run the cells, skipping finished ones, each after the cells it needs; statuses in
    cell.status / cell.message. jobs > 1: that many cells at a time (subprocesses watched by
    threads); a cell starts as soon as the cells it needs are done, in the plan's order, so
    --jobs 1 runs exactly the sequential order. Results do not depend on the order: each cell
    reads only the finished files of the cells it needs. quiet: print the failed and skipped
    cells only."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
    from concurrent.futures import TimeoutError as FutureTimeout

    by_key = {c.key: c for c in cells}
    todo = [c for c in cells if not c.finished()]
    say = (lambda *a, **k: None) if quiet else print
    say(f"{len(cells)} cells, {len(cells) - len(todo)} finished earlier, {len(todo)} to run"
          + (f", {jobs} at a time" if jobs > 1 else ""))
    for cell in cells:
        if cell.finished():
            cell.status = "finished earlier"
    pending = [c for c in cells if c.status is None]
    pool = ThreadPoolExecutor(jobs) if jobs > 1 else None
    running, procs, free = {}, {}, list(range(jobs))
    started, t_start, trained = 0, time.time(), 0

    def finish(cell, result, t0):
        nonlocal trained
        rc, message, log_path = result
        if rc == 0 and cell.finished():
            cell.status = "done"
            trained += cell_epochs(cell)
            s = cell.summary() or {}
            say(f"    {cell.key if jobs > 1 else ''}{': ' if jobs > 1 else ''}done in {time.time() - t0:.0f} s: "
                  f"best {fmt_acc(_selected_accuracy(s))}% (epoch {s.get('selected_epoch', s.get('best_epoch'))}), "
                  f"final {fmt_acc(s.get('final_test_accuracy'))}%", flush=True)
        else:
            cell.status = "failed"
            cell.message = f"exit {rc}: {message}" if rc else f"exit 0 but no {cell.summary_path}"
            print(f"    {cell.key + ': ' if jobs > 1 else ''}FAILED ({cell.message}); log {log_path}", flush=True)
        on_progress()

    try:
        while pending or running:
            for cell in list(pending):
                states = [by_key[d].status for d in cell.deps]
                bad = [d for d, st in zip(cell.deps, states) if st in ("failed", "skipped", "interrupted")]
                if bad:
                    pending.remove(cell)
                    cell.status, cell.message = "skipped", f"needs {', '.join(bad)}, which did not finish"
                    print(f"[skip] {cell.key}: {cell.message}")
                elif free and all(st in ("done", "finished earlier") for st in states):
                    pending.remove(cell)
                    slot = free.pop(0)
                    started += 1
                    env = device_env(devices, slot, jobs)
                    where = f"  [{env['CUDA_VISIBLE_DEVICES'] and 'cuda:' + env['CUDA_VISIBLE_DEVICES'] or 'cpu'}]" \
                        if "CUDA_VISIBLE_DEVICES" in env else ""
                    say(f"[{started}/{len(todo)}] {cell.key}: {shlex.join([cell.script] + cell.args[4:])}{where}",
                          flush=True)
                    t0 = time.time()
                    say(progress_line(cells, [c.key for c, _, _ in running.values()] + [cell.key],
                                        t0 - t_start, trained), flush=True)
                    if pool is None:
                        try:
                            result = run_cell(cell, extra, log_dir, verbose, env)
                        except Interrupted:
                            cell.status, cell.message = "interrupted", "rerun the same command to continue"
                            on_progress()
                            raise
                        free.append(slot)
                        finish(cell, result, t0)
                    else:
                        running[pool.submit(run_cell, cell, extra, log_dir, verbose, env, procs)] = (cell, slot, t0)
            if not running:
                if pending and not free:
                    raise AssertionError("no free job slot and nothing running")
                if pending and not any(all(by_key[d].status in ("done", "finished earlier") for d in c.deps)
                                       for c in pending):
                    raise AssertionError(f"cells wait for cells that never run: {[c.key for c in pending]}")
                continue
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                cell, slot, t0 = running.pop(future)
                free.append(slot)
                finish(cell, future.result(), t0)
    except KeyboardInterrupt:
        # Parallel cells: a Ctrl-C in a terminal reached the scripts too; a SIGTERM to
        # replicate.py did not. Tell each to stop (its files are written atomically), then wait.
        for proc in list(procs.values()):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
        deadline = time.time() + 120
        for future, (cell, _, _) in running.items():
            try:
                future.result(timeout=max(0.0, deadline - time.time()))
            except FutureTimeout:
                with contextlib.suppress(ProcessLookupError, KeyError):
                    procs[cell.key].kill()
                future.result()
            cell.status, cell.message = "interrupted", "rerun the same command to continue"
        on_progress()
        raise Interrupted() from None
    finally:
        if pool is not None:
            pool.shutdown(wait=True)

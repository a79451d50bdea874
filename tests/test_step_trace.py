"""The reading guide covers the code a training step runs: one SAMSOP-Net stage-2 step
(utils.train.train_step, CPU, fp32 and bf16) is traced with sys.setprofile, and every project file
it executes must be listed in docs/reading_order.md, at most ten of them."""
import os
import re
import sys
import warnings

import pytest
import torch

import utils.experiment as E
from utils.train import train_step

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(ROOT, "docs", "reading_order.md")
MAX_FILES = 10
T, FRAME, C = 4, 32, 3


def project_files_run(fn):
    """The repository's .py files (relative paths, tests aside) with a function called while fn runs."""
    seen = set()

    def profile(frame, event, arg):
        if event == "call":
            name = frame.f_code.co_filename
            if name.endswith(".py") and os.path.isabs(name) and name.startswith(ROOT + os.sep):
                rel = os.path.relpath(name, ROOT)
                if not rel.startswith((".venv", "tests")):
                    seen.add(rel)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return seen


def guide_files():
    """The files docs/reading_order.md names in its tables' first columns (`path/file.py`)."""
    return set(re.findall(r"^\|[^|]*\|\s*`([\w/]+\.py)`", open(GUIDE).read(), re.M))


def stage2_step(tmp_path, precision):
    args = E.base_parser("ms_op", "").parse_args(
        ["--datasetDir", str(tmp_path), "--outDir", str(tmp_path / "out"), "--seqLen", str(T), "--frameSize",
         str(FRAME), "--memSize", "8", "--pretrained", "none", "--numWorkers", "0", "--cacheDir", "none"])
    exp = E.Experiment("ms_op", args, 2, device=torch.device("cpu"), precision=precision,
                       num_classes=C, classes=[f"c{i}" for i in range(C)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = E.prepare_model(exp, exp.build_model("none"))
    torch.manual_seed(0)
    batch = {"rgb": torch.randn(2, T, 3, FRAME, FRAME), "label": torch.tensor([0, 2]),
             "mmaps": (torch.rand(2, T, exp.map_size, exp.map_size) > 0.5).float(),
             "frame_numbers": torch.arange(1, T + 1).repeat(2, 1), "index": torch.tensor([0, 1])}
    optimizer = exp.make_optimizer(model)
    exp.set_train_mode(model)
    return lambda: train_step(exp, model, batch, optimizer, torch.Generator().manual_seed(0))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_stage2_step_runs_only_files_the_guide_lists(tmp_path, precision, one_thread_flush_denormal):
    step = stage2_step(tmp_path, precision)
    step()  # once untraced: lazy imports and first-call set-up are not the step
    files = project_files_run(step)
    assert "utils/train.py" in files and "models/samsop.py" in files  # the trace sees the step
    missing = sorted(files - guide_files())
    assert not missing, f"a {precision} stage-2 step runs {missing}, which docs/reading_order.md does not list"
    assert len(files) <= MAX_FILES, f"a {precision} stage-2 step runs {len(files)} files: {sorted(files)}"


def test_the_trace_sees_a_file_the_guide_lacks(tmp_path, monkeypatch):
    """The check itself: a guide without models/convlstm.py must be caught (convlstm runs every step)."""
    step = stage2_step(tmp_path, "fp32")
    listed = guide_files()
    assert "models/convlstm.py" in listed
    monkeypatch.setattr(sys.modules[__name__], "guide_files", lambda: listed - {"models/convlstm.py"})
    with pytest.raises(AssertionError, match="convlstm"):
        files = project_files_run(step)
        missing = sorted(files - guide_files())
        assert not missing, f"runs {missing}"

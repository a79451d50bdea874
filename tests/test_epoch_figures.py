"""The per-epoch training figures of utils.train.train_one_epoch (the log.csv columns train_loss,
train_acc, op_loss, op_acc) against a hand count over clips.

The model's outputs are overridden so that chosen clips are right and the others wrong, with
logits 10 on one class and 0 elsewhere: a right clip's cross-entropy is log(1 + (K-1) e^-10), a
wrong one's log(e^10 + K - 1), for K classes. Two batches of 4 and 3 clips: every mean is over
the 7 clips (a mean of the two batch means would differ)."""
import math

import pytest
import torch
import torch.nn.functional as F

from utils import experiment as E
from utils.train import train_one_epoch

pytestmark = [pytest.mark.filterwarnings("ignore:pretrained='none'"),
              pytest.mark.usefixtures("one_thread_flush_denormal")]
C, T = 3, 4
ACTION_RIGHT = [[True, False, False, False], [True, True, True]]   # 4 of 7 clips
ORDER_RIGHT = [[True, True, True, False], [False, False, False]]   # 3 of 7 clips


class Loader(list):
    class sampler:  # noqa: N801 - the attribute train_one_epoch reads
        @staticmethod
        def set_epoch(epoch):
            pass


def ce(right, k):
    return math.log(1 + (k - 1) * math.exp(-10)) if right else math.log(math.exp(10) + k - 1)


def peaked(target, right, k, like):
    """Logits 10 at the target (right) or the next class (wrong); 0 * `like` keeps the graph."""
    cls = torch.where(torch.tensor(right), target, (target + 1) % k)
    return 10 * F.one_hot(cls, k).float() + 0 * like


def test_train_one_epoch_figures_are_means_over_clips(tmp_path, monkeypatch):
    args = E.base_parser("ms_op", "test").parse_args(
        ["--datasetDir", str(tmp_path), "--outDir", str(tmp_path / "o"), "--frameSize", "64", "--seqLen", str(T),
         "--memSize", "8", "--pretrained", "none", "--noMS"])
    exp = E.Experiment("ms_op", args, 2, torch.device("cpu"), "fp32", C, ["a", "b", "c"])
    model = E.prepare_model(exp, exp.build_model("none"))
    optimizer = exp.make_optimizer(model)
    real_forward = exp.forward
    plans = iter(zip(ACTION_RIGHT, ORDER_RIGHT))

    def forward(model, batch, generator, train):
        out = real_forward(model, batch, generator, train)
        action, order = next(plans)
        out["logits"] = peaked(batch["label"], action, C, out["logits"])
        out["op_logits"] = peaked(out["op_target"], order, 12, out["op_logits"])
        return out
    monkeypatch.setattr(exp, "forward", forward)
    torch.manual_seed(0)
    loader = Loader({"rgb": torch.randn(n, T, 3, 64, 64), "label": torch.tensor([0, 1, 2, 0][:n]),
                     "index": torch.arange(n)} for n in (4, 3))
    result = train_one_epoch(exp, model, loader, optimizer, 1, torch.Generator().manual_seed(0))
    clips = [r for batch in ACTION_RIGHT for r in batch]
    orders = [r for batch in ORDER_RIGHT for r in batch]
    assert result["acc"] == pytest.approx(100 * 4 / 7)
    assert result["op_acc"] == pytest.approx(100 * 3 / 7)
    assert result["loss"] == pytest.approx(sum(ce(r, C) for r in clips) / 7, rel=1e-5)
    assert result["op_loss"] == pytest.approx(sum(ce(r, 12) for r in orders) / 7, rel=1e-5)


def test_the_epoch_line_shows_the_heads_where_they_are_on():
    from utils.train import epoch_line
    test, no_val = {"loss": 1.0, "acc": 40.0}, {"loss": None, "acc": None}
    heads = {"loss": 1.25, "acc": 50.0, "ms_loss": 0.5, "op_loss": 2.4, "op_acc": 12.5}
    assert epoch_line(3, 1e-4, heads, test, no_val, 3.2) == (
        "epoch   3  lr 0.0001  train loss 1.2500 acc  50.0  ms loss 0.5000  op loss 2.4000 acc  12.5  "
        "test loss 1.0000 acc  40.0  (3.2s)")
    op_only = dict(heads, ms_loss=float("nan"))  # --noMS
    assert "ms loss" not in epoch_line(3, 1e-4, op_only, test, no_val, 3.2)
    assert "op loss 2.4000 acc  12.5" in epoch_line(3, 1e-4, op_only, test, no_val, 3.2)
    nan = float("nan")
    stage1 = {"loss": 1.25, "acc": 50.0, "ms_loss": nan, "op_loss": nan, "op_acc": nan}
    assert epoch_line(1, 1e-3, stage1, test, {"loss": 0.9, "acc": 60.0}, 1.0) == (
        "epoch   1  lr 0.001  train loss 1.2500 acc  50.0  val acc  60.0  test loss 1.0000 acc  40.0  (1.0s)")


def test_progress_bars_on_a_terminal_only():
    import io

    from utils.cli import show_progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True
    assert show_progress(stream=Terminal()) and not show_progress(quiet=True, stream=Terminal())
    assert not show_progress(stream=io.StringIO())  # redirected to a file or a pipe

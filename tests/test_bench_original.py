"""bench.py --compareOriginal: the original's stage 2 timed step by step (tools/bench_original.py),
on the fake "original" tree of tests/test_verify_original.py (this project's EgoRNN under the
original's names, run by a main-run-rgb.py in the original's style); a bad DIR is a usage error."""
import pytest
import torch

import bench
from tests.test_verify_original import fake_tree
from tools.bench_original import original_stage2_seconds

pytestmark = pytest.mark.filterwarnings("ignore:pretrained='none'")


def test_original_steps_timed_from_forward_to_forward(tmp_path):
    """A fake original whose forward sleeps 0.3 s: `steps` timed steps (not the warm-up one),
    each lasting at least the sleep. No upper bound: shared test machines stall processes."""
    src = fake_tree(tmp_path / "orig", perturb="(__import__('time').sleep(0.3) or 0.0)")
    torch.manual_seed(0)
    rgb, labels = torch.randn(2, 3, 3, 32, 32), torch.tensor([0, 2])
    seconds = original_stage2_seconds(str(src), rgb, labels, num_classes=3, mem_size=8, steps=2, warmup=1)
    assert len(seconds) == 2
    assert all(s >= 0.3 for s in seconds), seconds


def test_compare_original_needs_a_checkout_and_stage2(tmp_path, capsys):
    for argv, needle in [(["--compareOriginal", str(tmp_path / "nope")], "no such folder"),
                         (["--model", "ms", "--compareOriginal", str(tmp_path)], "--model rgb or ms_op"),
                         (["--precision", "fp32", "bf16", "--compareOriginal", str(fake_tree(tmp_path / "o"))],
                          "choose one --precision")]:
        with pytest.raises(SystemExit) as e:
            bench.parse_args(argv)
        assert e.value.code == 2
        assert needle in capsys.readouterr().err.splitlines()[-1]

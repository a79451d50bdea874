"""Each script starts from the weights it is given: stage 2 from --stage1Dict, two-stream from
--flowModel and --rgbModel, flow from --pretrained PATH (the cross-modality init).

The given files hold weights that no fresh model has (their own seed, BatchNorm statistics
drawn at random), and the runs train one epoch at lr 1e-30: far below the last bit of any weight,
so after the epoch every loaded tensor must still equal the file's. BatchNorm statistics of
layers that run in train mode (the flow model; the two-stream flow layer4) are updated by any
forward pass and are left out. Heads and classifiers that no file provides must hold PyTorch's
default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

from utils import experiment as E

ROOT = Path(__file__).resolve().parents[1]
# Small and quick: 32 px frames, 2 training clips (user S1), one epoch at an lr that moves nothing.
TINY = ["--frameSize", "32", "--seqLen", "4", "--trainUsers", "S1", "--trainBatchSize", "2", "--memSize", "16",
        "--valBatchSize", "4", "--numWorkers", "0", "--precision", "fp32", "--camVideos", "0", "--numEpochs", "1",
        "--cacheDir", "none"]
FROZEN_LR = ["--lr", "1e-30"]
TRAIN_MODE_BN_STATS = ("running_mean", "running_var", "num_batches_tracked")
pytestmark = [pytest.mark.filterwarnings("ignore:pretrained='none'"),
              pytest.mark.usefixtures("one_thread_flush_denormal")]  # the scripts run in this process


def script(kind, *args):
    assert E.run(kind, [str(a) for a in args]) == 0


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "syn"
    p = subprocess.run([sys.executable, "-m", "datasets.prepare.synthetic", "--outDir", str(d), "--classes", "3",
                        "--instances", "1", "--size", "48x36"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return d


def randomise(model, seed):
    """Weights of their own seed, and BatchNorm statistics no fresh model has."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.5 + 0.75)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(1 + 0.1 * torch.rand(m.weight.shape, generator=g))
                if m.bias is not None:
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.02 - 0.01)
    return model


def checkpoint_file(kind, stage, data, path, seed):
    """A checkpoint of this project's format (Experiment.checkpoint) of a model with its own weights."""
    args = E.base_parser(kind, "test").parse_args(["--datasetDir", str(data), "--outDir", str(path.parent / "x"),
                                                   "--pretrained", "none", *TINY])
    exp = E.Experiment(kind, args, stage, torch.device("cpu"), "fp32", 3, ["open_box", "put_cup", "take_cup"])
    torch.manual_seed(seed)
    model = randomise(exp.build_model("none"), seed)
    torch.save(exp.checkpoint(model, 1, 50.0), path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    if got.is_floating_point():
        assert torch.allclose(got, want, rtol=0, atol=1e-12), (what, (got - want).abs().max())
    else:
        assert torch.equal(got, want), what


def assert_default_init(state, prefix):
    """Every Linear / Conv2d weight under `prefix` is PyTorch's default, U(-b, b), b = 1/sqrt(fan_in)."""
    weights = {k: v for k, v in state.items() if k.startswith(prefix) and k.endswith(".weight") and v.dim() >= 2}
    assert weights, prefix
    for k, w in weights.items():
        bound = 1 / math.sqrt(w[0].numel())
        assert w.abs().max() <= bound * (1 + 1e-6), k
        assert 0.8 < w.std().item() / (bound / math.sqrt(3)) < 1.2, k  # spread of U(-b, b)


def test_stage2_starts_from_stage1Dict(data, tmp_path):
    given = checkpoint_file("rgb", 1, data, tmp_path / "s1.pth", seed=11)
    script("ms_op", "--datasetDir", data, "--outDir", tmp_path / "o", "--stage", "2",
        "--stage1Dict", tmp_path / "s1.pth", "--pretrained", "none", *TINY, *FROZEN_LR)
    got = torch.load(tmp_path / "o" / "stage2" / "best_model.pth", weights_only=True)["model"]
    egornn = {k for k in got if k.startswith("egornn.")}
    assert egornn == set(given), egornn ^ set(given)
    for k in egornn:
        assert_same(got[k], given[k], k)
    # the heads are new: in the model, not in the file, freshly initialised
    heads = {k for k in got if not k.startswith("egornn.")}
    assert any(k.startswith("ms_head.") for k in heads) and any(k.startswith("op_head.") for k in heads)
    assert heads == set(got) - egornn
    assert_default_init(got, "ms_head.")
    assert_default_init(got, "op_head.")


def test_flow_starts_from_pretrained_path_and_twostream_from_its_models(data, tmp_path):
    # flow: --pretrained PATH, a torchvision resnet34 state dict of its own
    torch.manual_seed(21)
    resnet = randomise(torchvision.models.resnet34(weights=None), seed=21).state_dict()
    torch.save(resnet, tmp_path / "resnet34.pth")
    script("flow", "--datasetDir", data, "--outDir", tmp_path / "flow", "--pretrained", tmp_path / "resnet34.pth",
        *TINY, *FROZEN_LR)
    flow_file = tmp_path / "flow" / "stage1" / "best_model.pth"
    flow = torch.load(flow_file, weights_only=True)["model"]
    conv1 = resnet["conv1.weight"].mean(dim=1, keepdim=True).repeat(1, 10, 1, 1)  # cross-modality init
    assert_same(flow["conv1.weight"], conv1, "conv1.weight")
    trunk = [k for k in resnet if not k.startswith(("fc.", "conv1.")) and not k.endswith(TRAIN_MODE_BN_STATS)]
    assert len(trunk) > 100
    for k in trunk:
        assert_same(flow[k], resnet[k], k)
    assert set(flow) - set(resnet) == {"classifier.1.weight", "classifier.1.bias"}
    assert_default_init(flow, "classifier.")

    # two-stream: --flowModel (the flow run's best model) and --rgbModel (a stage-2 RGB model)
    rgb = checkpoint_file("rgb", 2, data, tmp_path / "rgb.pth", seed=12)
    script("twostream", "--datasetDir", data, "--outDir", tmp_path / "ts", "--flowModel", flow_file,
        "--rgbModel", tmp_path / "rgb.pth", "--pretrained", "none", *TINY, *FROZEN_LR, "--flowLr", "1e-30")
    got = torch.load(tmp_path / "ts" / "stage1" / "best_model.pth", weights_only=True)["model"]
    flow_keys = {k for k in got if k.startswith("flow_model.")}
    rgb_keys = {k for k in got if k.startswith("rgb_model.")}
    assert {k[len("flow_model."):] for k in flow_keys} == set(flow)
    assert {"egornn." + k[len("rgb_model."):] for k in rgb_keys} == set(rgb)
    for k in flow_keys:
        if not (k.startswith("flow_model.layer4.") and k.endswith(TRAIN_MODE_BN_STATS)):
            assert_same(got[k], flow[k[len("flow_model."):]], k)
    for k in rgb_keys:
        assert_same(got[k], rgb["egornn." + k[len("rgb_model."):]], k)
    assert set(got) - flow_keys - rgb_keys == {"classifier.1.weight", "classifier.1.bias"}
    assert_default_init(got, "classifier.")

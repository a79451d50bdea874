"""utils/verify_original.py without the original code: a fake "original" tree written here, in
the original's torch 0.3 style, whose model is this project's EgoRNN under the original's names.
The training check agrees for it, and finds a perturbed model, a wrong parameter set and a wrong
optimiser setting; the comparisons of logits and states; the one-line error of a bad --egornnSrc."""
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import utils.verify_original as V
from utils.errors import UserError

ROOT = Path(__file__).resolve().parents[1]

MODEL = '''
import torch
import torch.nn as nn
from torch.autograd import Variable
from models import EgoRNN


class attentionModel(nn.Module):
    """EgoRNN with the original's attribute names (resNet, lstm_cell.conv_<gate>_xx/hh, fc, classifier)."""

    def __init__(self, num_classes=61, mem_size=512):
        super(attentionModel, self).__init__()
        m = EgoRNN(num_classes, mem_size=mem_size, pretrained="none")
        self.resNet = m.backbone
        self.weight_softmax = self.resNet.fc.weight
        self.lstm_cell = nn.Module()
        for g in "ifco":
            setattr(self.lstm_cell, "conv_%s_xx" % g, getattr(m.convlstm, "conv_x" + g))
            setattr(self.lstm_cell, "conv_%s_hh" % g, getattr(m.convlstm, "conv_h" + g))
        self.fc = m.classifier[1]
        self.classifier = m.classifier
        self._egornn = [m]  # not a submodule: its parameters are registered above

    def forward(self, inputVariable):  # (T, B, 3, H, W), as the original
        out = self._egornn[0](inputVariable.permute(1, 0, 2, 3, 4))
        return out["logits"] + PERTURB, out["cell_pooled"]
'''

MAIN = '''
from __future__ import print_function
from objectAttentionModelConvLSTM import *
from makeDatasetRGB import *
from tensorboardX import SummaryWriter
import sys


def main_run(dataset, stage, train_data_dir, val_data_dir, stage1_dict, out_dir, seqLen, trainBatchSize,
             valBatchSize, numEpochs, lr1, decay_factor, decay_step, memSize):
    writer = SummaryWriter(out_dir)
    train_loader = torch.utils.data.DataLoader(makeDataset(train_data_dir), batch_size=trainBatchSize, shuffle=True)
    model = attentionModel(num_classes=61, mem_size=memSize)
    if stage == 2:
        model.load_state_dict(torch.load(stage1_dict))
    model.train(False)
    for params in model.parameters():
        params.requires_grad = False
    train_params = list(model.lstm_cell.parameters()) + list(model.classifier.parameters()) + EXTRA
    for params in train_params:
        params.requires_grad = True
    model.lstm_cell.train(True)
    model.classifier.train(True)
    model.cuda()
    loss_fn = nn.CrossEntropyLoss()
    optimizer_fn = torch.optim.Adam(train_params, lr=lr1, weight_decay=4e-5, eps=EPS)
    for epoch in range(numEpochs):
        epoch_loss = 0
        for inputs, targets in train_loader:
            optimizer_fn.zero_grad()
            output_label, _ = model(Variable(inputs.permute(1, 0, 2, 3, 4).cuda()))
            loss = loss_fn(output_label, Variable(targets.cuda(async=True)))
            loss.backward()
            optimizer_fn.step()
            epoch_loss += loss.data[0]
        print('Train: Epoch = {} | Loss = {} | Accuracy = {}'.format(epoch + 1, epoch_loss, 0))
        writer.add_scalar('train/epoch_loss', epoch_loss, epoch + 1)


def __main__():
    main_run(*sys.argv[1:])

__main__()
'''


def fake_tree(root, perturb="0.0", extra="[]", eps="1e-4"):
    """Every file the tool needs; only the RGB model and main-run-rgb.py do something."""
    root.mkdir(parents=True)
    for f in V.ORIGINAL_FILES:
        (root / f).write_text("")
    (root / "objectAttentionModelConvLSTM.py").write_text(MODEL.replace("PERTURB", perturb))
    (root / "makeDatasetRGB.py").write_text("def makeDataset(*args, **kwargs):\n    raise RuntimeError('not patched')\n")
    (root / "main-run-rgb.py").write_text(MAIN.replace("EXTRA", extra).replace("EPS", eps))
    return root


C, MEM, STEPS = 3, 8, 2


@pytest.fixture(scope="module")
def seed_and_batch(tmp_path_factory):
    """The seed model saved as the original does, and a fixed batch (2 clips of 2 frames, 32 px)."""
    d = tmp_path_factory.mktemp("seed")
    orig = V.Original(str(fake_tree(d / "tree")))
    torch.manual_seed(0)
    with orig.runtime():
        model = orig.rgb_model(C, MEM)
    path = d / "model_rgb_state_dict.pth"
    torch.save(model.state_dict(), path)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(2, 2, 3, 32, 32, generator=g), torch.tensor([0, 2]))
    return str(path), batch


def check(tmp_path, seed_and_batch, stage=1, steps=STEPS, **tree):
    path, batch = seed_and_batch
    orig = V.Original(str(fake_tree(tmp_path / "tree", **tree)))
    args = types.SimpleNamespace(datasetDir=str(tmp_path), seqLen=2, memSize=MEM, steps=steps, seed=0)
    kwargs = dict(dataset="gtea61", stage=stage, train_data_dir="train", val_data_dir=None, stage1_dict=path,
                  seqLen=2, trainBatchSize=2, valBatchSize=2, numEpochs=steps, lr1=1e-3, decay_factor=0.1,
                  decay_step=[25], memSize=MEM, out_dir=str(tmp_path / "out"))
    return V.training_check(orig, "rgb", stage, "main-run-rgb.py", "attentionModel", lambda: orig.rgb_model(C, MEM),
                            path, batch, kwargs, args, C, str(tmp_path / "work"))


@pytest.mark.filterwarnings("ignore")
def test_training_check_agrees_for_the_same_model_and_stage(tmp_path, seed_and_batch):
    ok, text = check(tmp_path, seed_and_batch)
    assert ok, text
    # ConvLSTM 4 x (8*512*9 + 8 + 8*8*9) + classifier 8*3 + 3 = 149,819, counted by hand
    assert "trainable 149,819 = 149,819" in text, text
    assert "same Adam settings" in text and f"after {STEPS} steps" in text
    # the patched module names are gone again: the next tree imports its own files
    assert "objectAttentionModelConvLSTM" not in sys.modules and "tensorboardX" not in sys.modules


@pytest.mark.filterwarnings("ignore")
def test_training_check_finds_a_perturbed_model(tmp_path, seed_and_batch):
    ok, text = check(tmp_path, seed_and_batch, steps=1, perturb="0.01 * torch.arange(out['logits'].shape[1]).float()")
    assert not ok
    loss_diff = float(text.split("step 1: |loss diff| ")[1].split(",")[0])
    assert loss_diff > V.LOSS_TOL, text


@pytest.mark.filterwarnings("ignore")
def test_training_check_finds_another_parameter_set(tmp_path, seed_and_batch):
    ok, text = check(tmp_path, seed_and_batch, steps=1, extra="list(model.resNet.fc.parameters())")
    assert not ok
    assert "trainable 662,819 != 149,819" in text, text  # + the ImageNet fc (1000*512 + 1000)
    assert "worst backbone.fc." in text, text


@pytest.mark.filterwarnings("ignore")
def test_training_check_finds_other_optimiser_settings(tmp_path, seed_and_batch):
    ok, text = check(tmp_path, seed_and_batch, steps=1, eps="1e-8")
    assert not ok and "optimisers differ" in text, text


def test_compare_logits():
    ref = {"S2/a/1": torch.tensor([1.0, -2.0, 0.5]), "S2/b/1": torch.tensor([0.0, 3.0, -1.0])}
    same = {k: v.clone() + 1e-6 for k, v in ref.items()}
    ok, text = V.compare_logits(ref, same)
    assert ok and "2 videos" in text and "same top-1 on 2" in text
    off = {k: v.clone() for k, v in ref.items()}
    off["S2/b/1"][2] += 1e-3  # 1e-3 > 1e-4 x the largest |logit| (3)
    assert not V.compare_logits(ref, off)[0]
    assert not V.compare_logits(ref, {"S2/a/1": ref["S2/a/1"]})[0]


def test_compare_training_tolerances():
    start = {"w": torch.zeros(4), "n": torch.tensor(0)}

    def run(step1, final, losses, n=2):
        return dict(losses=losses, start=start, step1={"w": torch.tensor(step1), "n": torch.tensor(1)},
                    final={"w": torch.tensor(final), "n": torch.tensor(n)}, optimizer=("SGD", 4, [{"lr": 0.1}]))

    ours = run([1e-2] * 4, [2e-2] * 4, [1.0, 0.5])
    noisy = run([1e-2] * 4, [2e-2 + 1e-4] * 4, [1.0, 0.5 + 1e-4])  # rounding spread 1e-4 after 2 steps
    ok, text = V.compare_training(run([1e-2] * 4, [2e-2 + 1.5e-4] * 4, [1.0, 0.5 + 1.5e-4]), ours, noisy)
    assert ok, text  # 1.5e-4 after 2 steps is within twice the spread
    assert not V.compare_training(run([1e-2] * 4, [2e-2 + 5e-4] * 4, [1.0, 0.5]), ours, noisy)[0]  # 5 x spread
    assert not V.compare_training(run([1e-2] * 4, [2e-2] * 4, [1.0, 0.5 + 5e-4]), ours, noisy)[0]  # loss too
    assert not V.compare_training(run([1e-2 + 1e-4] * 4, [2e-2] * 4, [1.0, 0.5]), ours, noisy)[0]  # step 1 is strict
    assert not V.compare_training(run([1e-2] * 4, [2e-2] * 4, [1.0, 0.5], n=3), ours, noisy)[0]  # step counters
    other = run([1e-2] * 4, [2e-2] * 4, [1.0, 0.5])
    other["optimizer"] = ("SGD", 4, [{"lr": 0.01}])
    assert not V.compare_training(other, ours, noisy)[0]


def test_bad_egornn_src_is_a_one_line_error(tmp_path):
    for src, needle in ((tmp_path / "nope", "no such folder"),
                        (ROOT, "not a checkout of the original Ego-RNN code")):
        with pytest.raises(UserError) as e:
            V.main(["--egornnSrc", str(src), "--datasetDir", str(tmp_path)])
        assert str(e.value).startswith(f"--egornnSrc {src}") and needle in str(e.value), e.value
        assert "github.com/swathikirans/ego-rnn" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="--steps 30"):
        V.main(["--egornnSrc", str(fake_tree(tmp_path / "tree")), "--datasetDir", str(tmp_path), "--steps", "30"])
    # from the command line: one line, exit status 2, nothing else
    p = subprocess.run([sys.executable, "-m", "utils.verify_original", "--egornnSrc", str(tmp_path / "nope"),
                        "--datasetDir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stdout == "", (p.returncode, p.stdout, p.stderr)
    assert p.stderr.splitlines() == [f"error: --egornnSrc {tmp_path / 'nope'}: no such folder; clone "
                                     f"https://github.com/swathikirans/ego-rnn and pass its folder"], p.stderr

"""The model as the paper and its references built it: the order-prediction head's input and draw,
the CAM class choice in fp32, the heads' losses, the precision choice per CPU kind, the
validation split, and run state that loads without executing code."""
import math
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import utils.experiment as E
from datasets.gtea61 import clip_numbers
from utils import device
from models import EgoRNN, MotionSegmentationHead, OrderPredictionHead, SAMSOPNet

pytestmark = pytest.mark.filterwarnings("ignore:pretrained=.none.")


# ----------------------------------------------------------------------------- precision per CPU

@pytest.mark.parametrize("flags,expected", [
    ("fpu sse avx2 avx512f avx512bw amx_bf16 amx_tile amx_int8", "bf16"),  # Intel Xeon with AMX
    ("fpu sse avx2 avx512f avx512bw avx512_bf16 avx512_vnni", "bf16"),    # AMD EPYC Zen 4
    ("fpu sse avx2 avx512f avx512bw avx512_vnni", "fp32"),                 # AVX-512 without bf16
    ("fpu sse avx2 fma", "fp32"),                                          # AVX2 only (EPYC Zen 3)
])
def test_auto_precision_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch, flags, expected):
    cpuinfo = f"processor\t: 0\nflags\t\t: {flags}\n"
    assert device.cpu_has_native_bf16(cpuinfo) == (expected == "bf16")
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: expected == "bf16")
    assert device.pick_precision("auto", torch.device("cpu")) == expected
    assert device.pick_precision("fp32", torch.device("cpu")) == "fp32"


def test_auto_precision_is_fp32_when_onednn_has_no_bf16_kernels(monkeypatch):
    # ONEDNN_MAX_CPU_ISA=AVX2 on a bf16 CPU: the flags still say bf16, oneDNN runs none
    monkeypatch.setattr(device, "_onednn_bf16", lambda: False)
    assert not device.cpu_has_native_bf16()
    assert device.pick_precision("auto", torch.device("cpu")) == "fp32"


@pytest.mark.parametrize("capability,expected", [((7, 0), "fp32"), ((7, 5), "fp32"), ((8, 0), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_on_cuda_is_bf16_only_where_it_is_native(monkeypatch, capability, expected):
    # a Volta / Turing GPU: torch.cuda.is_bf16_supported() says True by default, bf16 being emulated there
    native = capability >= (8, 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation or native)
    assert device.pick_precision("auto", torch.device("cuda")) == expected
    assert device.pick_precision("bf16", torch.device("cuda")) == "bf16"


# ----------------------------------------------------------------------------- order prediction

def _samsop(op_input, frame_size=64, classes=3):
    torch.manual_seed(0)
    s = 2 if frame_size == 64 else 7
    return SAMSOPNet(classes, mem_size=8, attention=True, ms=None, op=True, pretrained="none", ms_size=s,
                     op_input=op_input)


@pytest.mark.parametrize("op_input", ["flat", "pooled"])
def test_op_head_reads_the_layer4_map_of_each_shown_frame(op_input):
    model = _samsop(op_input).eval()
    s = 2  # layer4 side at 64 px
    assert model.op_head.fc6[0].in_features == (512 * s * s if op_input == "flat" else 512)
    seen = {}
    model.op_head.register_forward_pre_hook(lambda m, args: seen.__setitem__("x", args[0]))
    x = torch.randn(3, 6, 3, 64, 64)
    with torch.no_grad():
        out = model(x, generator=torch.Generator().manual_seed(1))
    shown = out["op_frames"]  # (B, 4) clip positions in the order shown
    assert seen["x"].shape == (3, 4, 512 * s * s if op_input == "flat" else 512)
    for b in range(3):
        for k in range(4):
            m = out["layer4"][b, shown[b, k]]  # (512, s, s)
            expected = m.flatten() if op_input == "flat" else m.mean(dim=(1, 2))
            assert torch.equal(seen["x"][b, k], expected)


def test_op_head_parameter_count_with_the_papers_fc6():
    """fc6 Linear(7*7*512, 1024), fc7 Linear(2*1024, 512), fc8 Linear(6*512, 12), written out."""
    head = OrderPredictionHead(7 * 7 * 512)
    expected = (25088 * 1024 + 1024) + (2048 * 512 + 512) + (3072 * 12 + 12)
    assert sum(p.numel() for p in head.parameters()) == expected == 26_777_100


def test_op_draw_shows_four_different_frames_of_a_short_video():
    # a 5-frame video at seqLen 16: the loader's numbers floor(1 + k / 4), k = 0..15, repeat each of 1..4
    numbers = torch.tensor(clip_numbers(5, 16))
    assert numbers.tolist() == [1] * 4 + [2] * 4 + [3] * 4 + [4] * 4
    g = torch.Generator().manual_seed(0)
    frame_idx, order, target = OrderPredictionHead.sample(200, 16, g, numbers.expand(200, 16))
    chosen = numbers[frame_idx]  # (200, 4) frame numbers in temporal order
    assert (chosen == torch.tensor([1, 2, 3, 4])).all()
    # without the frame numbers the same draw repeats frames (the bug this prevents)
    plain, _, _ = OrderPredictionHead.sample(200, 16, torch.Generator().manual_seed(0))
    assert any(len(set(numbers[row].tolist())) < 4 for row in plain)
    # every class is reachable, and each order is its class's forward or reversed order
    table = OrderPredictionHead.permutation_table()
    for o, t in zip(order, target):
        assert o.tolist() in (table[t, 0].tolist(), table[t, 1].tolist())
    with pytest.raises(ValueError, match="4 different frames"):
        OrderPredictionHead.sample(2, 6, g, torch.tensor([[1, 1, 2, 2, 3, 3]] * 2))


def test_samsop_forward_passes_frame_numbers_to_the_draw():
    model = _samsop("pooled").eval()
    numbers = torch.tensor([[1, 1, 2, 2, 3, 4]] * 4)
    with torch.no_grad():
        out = model(torch.randn(4, 6, 3, 64, 64), generator=torch.Generator().manual_seed(0),
                    frame_numbers=numbers)
    for b in range(4):
        assert sorted(numbers[b, out["op_frames"][b]].tolist()) == [1, 2, 3, 4]


def test_op_loss_is_the_cross_entropy_of_the_12_classes():
    logits = torch.tensor([[2.0, 0.5] + [0.0] * 10, [0.0] * 11 + [3.0]])
    target = torch.tensor([1, 11])
    z0 = math.exp(2.0) + math.exp(0.5) + 10
    z1 = 11 + math.exp(3.0)
    expected = (-(0.5 - math.log(z0)) - (3.0 - math.log(z1))) / 2
    assert OrderPredictionHead.loss(logits.bfloat16(), target).dtype == torch.float32
    assert OrderPredictionHead.loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


# ----------------------------------------------------------------------------- motion segmentation

def test_ms_loss_takes_binary_targets_and_rejects_others():
    head = MotionSegmentationHead(8, size=2)
    out = torch.zeros(3, 2, 2, 2)
    out[:, 1] = 1.0  # "moving" logit one above "static" everywhere
    target = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]] * 3)
    # per position: -log softmax; moving: log(1 + e^-1), static: log(1 + e^1)
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert head.loss(out, target).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="0 or 1"):
        head.loss(out, target * 0.6)  # raw map values: the dataset binarises them, once
    reg = MotionSegmentationHead(8, size=2, regression=True)
    assert reg.loss(torch.full((3, 2, 2), 0.5), target).item() == pytest.approx(0.25)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reg.loss(torch.full((3, 2, 2), 0.5), target * 255)


# ----------------------------------------------------------------------------- CAM in fp32

def test_cam_class_is_chosen_in_fp32_under_bf16_autocast():
    """Two ImageNet classes whose logits differ by 1e-3 (bf16 resolution at 15 is 0.0625): bf16
    logits tie and argmax would take the lower index; the fp32 choice is the higher one."""
    torch.manual_seed(0)
    model = EgoRNN(3, mem_size=8, attention=True, pretrained="none").eval()
    fc = model.backbone.fc
    x = torch.randn(1, 2, 3, 64, 64)
    with torch.no_grad():
        f_bn = model.backbone(x.flatten(0, 1))[1]
        pooled = f_bn.mean(dim=(2, 3))  # (2, 512)
        w = torch.randn(512) * 0.01
        fc.weight.zero_()
        fc.bias.fill_(-100.0)
        a, b = 10, 700  # a < b: a bf16 tie goes to a
        fc.weight[a] = fc.weight[b] = w
        base = 15.0 - float((pooled[0] @ w))
        fc.bias[a], fc.bias[b] = base, base + 1e-3
        fp32 = model(x)["cam_class"]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(x)
            logits_bf16 = model.backbone(x.flatten(0, 1))[0]
    assert fp32[0, 0].item() == b
    assert bf16["cam_class"][0, 0].item() == b
    assert logits_bf16.dtype == torch.float32
    assert bf16["attention"].dtype == torch.float32
    # the map itself: softmax over positions of w_b . f_bn in fp32
    with torch.no_grad():
        f = model.backbone(x.flatten(0, 1))[1][0]
    cam = torch.einsum("k,khw->hw", fc.weight[b], f)
    assert torch.allclose(fp32_attention(model, x)[0, 0], F.softmax(cam.flatten(), 0).view_as(cam), atol=1e-6)


def fp32_attention(model, x):
    with torch.no_grad():
        return model(x)["attention"]


# ----------------------------------------------------------------------------- validation split

def test_validation_split_holds_out_a_fixed_share_of_each_class():
    from datasets.gtea61 import validation_split
    keys = [f"S{u}/c{c}/{i}" for c in range(3) for u in (1, 3, 4) for i in range(1, 3)]  # 6 per class
    labels = [int(k.split("/")[1][1:]) for k in keys]
    keys += ["S1/c3/1", "S1/c4/1", "S3/c4/1"]  # a class with 1 video, one with 2
    labels += [3, 4, 4]
    held = validation_split(keys, labels, 0.15)
    per_class = {c: sum(1 for k, y in zip(keys, labels) if k in held and y == c) for c in range(5)}
    # round(0.15 * 6) = 1; one video: none held out; two: one held out, one kept
    assert per_class == {0: 1, 1: 1, 2: 1, 3: 0, 4: 1}
    assert validation_split(list(reversed(keys)), list(reversed(labels)), 0.15) == held  # order-free
    big = validation_split(keys, labels, 0.5)
    assert {c: sum(1 for k, y in zip(keys, labels) if k in big and y == c) for c in range(5)} == \
        {0: 3, 1: 3, 2: 3, 3: 0, 4: 1}


def test_validation_and_training_parts_partition_the_training_users(tree):
    for c in ("open_box", "take_cup"):
        for u in ("S1", "S3"):
            for i in (1, 2, 3):
                tree.video(u, c, i, 6)
    from datasets import GTEA61
    kw = dict(seqLen=4, frameSize=32, mapSize=1)
    full = GTEA61(tree.root, ["S1", "S3"], "rgb", train=True, **kw)
    tr = GTEA61(tree.root, ["S1", "S3"], "rgb", train=True, holdout=(0.15, "train"), **kw)
    va = GTEA61(tree.root, ["S1", "S3"], "rgb", train=False, holdout=(0.15, "val"), **kw)
    assert sorted(tr.video_keys + va.video_keys) == sorted(full.video_keys)
    assert not set(tr.video_keys) & set(va.video_keys)
    assert len(va) == 2 and sorted(va.labels) == [0, 1]  # round(0.15 * 6) = 1 per class
    flow_val = GTEA61(tree.root, ["S1", "S3"], "flow", train=False, holdout=(0.15, "val"), **kw)
    assert flow_val.video_keys == va.video_keys  # every modality holds out the same videos


# ----------------------------------------------------------------------------- run state

def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    from utils.run_state import rng_state, set_rng_state
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    random.gauss(0, 1)
    g = torch.Generator().manual_seed(9)
    torch.save({"rng": rng_state(g)}, tmp_path / "s.pth")
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g),
                random.gauss(0, 1))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    g2 = torch.Generator()
    set_rng_state(torch.load(tmp_path / "s.pth", weights_only=True)["rng"], g2)
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3), torch.rand(2, generator=g2),
           random.gauss(0, 1))
    assert got[0] == expected[0] and got[1] == expected[1] and got[2] == expected[2] and got[5] == expected[5]
    assert torch.equal(got[3], expected[3]) and torch.equal(got[4], expected[4])


def test_selection_scores():
    from utils.run_state import selection_score
    test, val = {"acc": 40.0}, {"acc": 70.0}
    assert selection_score("test", 3, test, val) == 40.0
    assert selection_score("val", 3, test, val) == 70.0
    assert selection_score("last", 3, test, val) < selection_score("last", 4, test, val)


def test_paper_parameter_counts_with_flat_op_input():
    """SAMSOP-Net at 224 px, 61 classes: Ego-RNN + MS (classification) + OP (flat fc6)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SAMSOPNet(61, mem_size=512, attention=True, ms="classification", op=True, pretrained="none",
                          ms_size=7, op_input="flat")
    resnet34 = 21_797_672  # torchvision's resnet34 with its 1000-way fc
    convlstm = 4 * (512 * 512 * 9 + 512) + 4 * (512 * 512 * 9)
    classifier = 512 * 61 + 61
    ms = (512 * 100 + 100) + (100 * 49 * 98 + 98)
    op = 26_777_100
    assert sum(p.numel() for p in model.parameters()) == resnet34 + convlstm + classifier + ms + op


def test_training_batches_show_the_op_head_four_different_frames(tree, tmp_path):
    """5-frame videos at seqLen 8 repeat frames in every clip; the training step's draw (dataset
    frame numbers -> Experiment.forward -> SAMSOPNet) still shows 4 different ones."""
    for c in ("open_box", "take_cup"):
        for u in ("S1", "S2"):
            tree.video(u, c, 1, 5)
    args = E.base_parser("ms_op", "").parse_args(
        ["--datasetDir", tree.root, "--outDir", str(tmp_path / "o"), "--seqLen", "8", "--frameSize", "32",
         "--memSize", "8", "--trainBatchSize", "4", "--numWorkers", "0", "--pretrained", "none",
         "--cacheDir", "none", "--trainUsers", "S1", "--testUsers", "S2"])
    exp = E.Experiment("ms_op", args, 2, torch.device("cpu"), "fp32", None, None)
    train_set, test_set = E.stage_datasets(exp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = E.prepare_model(exp, exp.build_model("none")).eval()
    batch = next(iter(E.stage_loaders(exp, train_set, test_set)[0]))
    numbers = batch["frame_numbers"]
    assert numbers[0].tolist() == [1, 1, 2, 2, 3, 3, 4, 4]  # floor(linspace(1, 5, 8, endpoint=False))
    for seed in range(5):
        with torch.no_grad():
            out = exp.forward(model, batch, torch.Generator().manual_seed(seed), train=True)
        for b in range(numbers.shape[0]):
            assert sorted(numbers[b, out["op_frames"][b]].tolist()) == [1, 2, 3, 4]

"""Speed work: the frame cache gives byte-identical clips and follows changed
files; fp32 training results are bit-identical to the run recorded before the speed work, with
and without the cache; a bf16 step on the CPU trains exactly the stage's parameters with fp32
state; frozen layers build no autograd graph in the real training step; GPU loaders' uint8 clips
and decoded frames, finished by the device, match the CPU pipeline; bench.py writes its JSON."""
import csv
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import one_thread_and_flushed_subnormals

from datasets import GTEA61
from datasets.cache import FrameCache
from datasets.transforms import IMAGENET_STD as E_STD
from models import speed
from utils import experiment as E
from utils.data import SeededDataset, make_loader
from utils.train import train_step

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "speed_golden.json"
pytestmark = pytest.mark.filterwarnings("ignore:pretrained='none'")


@pytest.fixture(autouse=True, scope="module")
def one_thread_flush_denormal():
    with one_thread_and_flushed_subnormals():
        yield


def noisy_tree(tree, layout="course", videos=2, n=9):
    """Videos with random-noise frames and maps (resizing then really mixes pixels)."""
    rng = np.random.default_rng(0)
    for v in range(videos):
        tree.video("S1", f"class{v}", 1, n, layout=layout, size=(48, 36),
                   frame=lambda k: rng.integers(0, 256, (36, 48, 3)), mmap=lambda k: rng.integers(0, 256, (36, 48)))
        tree.video("S2", f"class{v}", 1, n, layout=layout, size=(40, 30),
                   frame=lambda k: rng.integers(0, 256, (30, 40, 3)), mmap=lambda k: rng.integers(0, 256, (30, 40)))
    return tree.root


def clips(ds, seeds=(3, 4)):
    s = SeededDataset(ds)
    return [s[(i, seed)] for seed in seeds for i in range(len(ds))]


def assert_same_clips(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if torch.is_tensor(x[k]):
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


# ----------------------------------------------------------------------------- frame cache

@pytest.mark.parametrize("modality,train", [("rgb_mmaps", True), ("rgb", False), ("twostream", True),
                                            ("flow", False)])
def test_cache_gives_byte_identical_clips(tree, tmp_path, modality, train):
    root = noisy_tree(tree)
    kw = dict(seqLen=6, frameSize=24, mapSize=3)
    direct = clips(GTEA61(root, ["S1", "S2"], modality, train, **kw))
    cached_ds = GTEA61(root, ["S1", "S2"], modality, train, cache=tmp_path / "fc", **kw)
    cold = clips(cached_ds)   # fills the cache
    assert cached_ds.cache.misses > 0
    warm = clips(cached_ds)   # reads it
    assert cached_ds.cache.hits > 0
    assert_same_clips(direct, cold)
    assert_same_clips(direct, warm)


def test_cache_arrays_equal_decoded_images(tree, tmp_path):
    root = noisy_tree(tree, layout="egornn", videos=1, n=5)
    cache = FrameCache(tmp_path / "fc")
    for path in sorted(Path(root).rglob("*.jpg")):
        mode = "RGB" if path.name.startswith("image_") else "L"
        with Image.open(path) as im:
            expected = np.asarray(im.convert(mode))
        for _ in range(2):  # miss, then hit
            arr = cache.array(str(path), mode, lambda: Image.open(path).convert(mode))
            assert arr.dtype == np.uint8 and np.array_equal(arr, expected) and not arr.flags.writeable
    assert cache.hits == cache.misses > 0


def test_cache_invalidated_by_changed_file(tmp_path):
    src = tmp_path / "f.png"
    cache = FrameCache(tmp_path / "fc")

    def decode():
        with Image.open(src) as im:
            im.load()
            return im.convert("RGB")

    Image.fromarray(np.full((4, 5, 3), 7, np.uint8)).save(src)
    first_entry = cache.entry_path(str(src), "RGB")
    assert cache.array(str(src), "RGB", decode)[0, 0, 0] == 7
    assert os.path.isfile(first_entry)
    # same size, new content: only the modification time tells
    Image.fromarray(np.full((4, 5, 3), 9, np.uint8)).save(src)
    st = os.stat(src)
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.array(str(src), "RGB", decode)[0, 0, 0] == 9
    assert not os.path.exists(first_entry)  # the stale version is removed
    assert cache.misses == 2
    # a damaged entry (e.g. a disk error) is decoded and written again
    entry = cache.entry_path(str(src), "RGB")
    Path(entry).write_bytes(b"FRM1garbage")
    assert cache.array(str(src), "RGB", decode)[0, 0, 0] == 9 and cache.misses == 3
    assert cache.array(str(src), "RGB", decode)[0, 0, 0] == 9 and cache.hits == 1
    assert not [p for p in Path(entry).parent.iterdir() if p.name.startswith(".tmp-")]


def test_cache_unwritable_folder_still_returns_frames(tmp_path, capsys):
    src = tmp_path / "f.png"
    Image.fromarray(np.full((4, 5), 3, np.uint8)).save(src)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = FrameCache(blocker / "fc")  # cannot be created
    for _ in range(2):
        assert cache.array(str(src), "L", lambda: Image.open(src).convert("L"))[0, 0] == 3
    assert capsys.readouterr().err.count("cannot be written") == 1


def test_cache_dir_resolution(tree, tmp_path, monkeypatch):
    root = noisy_tree(tree, videos=1)
    args = E.base_parser("rgb", "").parse_args(["--datasetDir", root, "--outDir", str(tmp_path / "out")])
    assert args.cacheDir == "auto"
    assert E.resolve_cache_dir(args) == os.path.join(root, ".cache", "frames")
    # the hidden cache folder is not taken for a user or class
    assert GTEA61(root, ["S1"], "rgb", False).classes == GTEA61(root, ["S1"], "rgb", False).classes == ["class0"]
    import datasets.cache as C
    monkeypatch.setattr(C, "_writable_dir", lambda p: not p.startswith(root))  # read-only dataset
    assert E.resolve_cache_dir(args) == str(tmp_path / "out" / ".frame_cache")
    args.cacheDir = "none"
    assert E.resolve_cache_dir(args) is None
    args.datasetDir = str(tmp_path / "missing")
    args.cacheDir = "auto"
    assert E.resolve_cache_dir(args) is None and not os.path.exists(args.datasetDir)


# ----------------------------------------------------------------------------- uint8 clips (GPU loaders)

@pytest.mark.parametrize("modality,train", [("rgb_mmaps", True), ("rgb", False), ("twostream", True),
                                            ("flow", True)])
def test_uint8_clips_normalised_later_are_identical(tree, tmp_path, modality, train):
    """GPU loaders send uint8 clips and normalise on the device (utils/train.to_device): the
    result equals the DataLoader's own float32 normalisation bit for bit (run here on the CPU,
    the same float32 operations the GPU runs)."""
    from datasets.transforms import normalize_inputs
    from utils.data import to_device
    root = noisy_tree(tree)
    ds = GTEA61(root, ["S1", "S2"], modality, train, seqLen=6, frameSize=24, mapSize=3)
    for i, seed in [(0, 3), (1, 4), (2, 5)]:
        ref = SeededDataset(ds)[(i, seed)]
        raw = SeededDataset(ds, normalize=False)[(i, seed)]
        for key in ("rgb", "flow"):
            if key in ref:
                assert raw[key].dtype == torch.uint8 and raw[key].shape == ref[key].shape
        assert_same_clips([ref], [normalize_inputs(dict(raw))])
    loader = make_loader(ds, 2, True, 0, 0, normalize=False)
    ref_loader = make_loader(ds, 2, True, 0, 0)
    batches = [to_device(b, torch.device("cpu")) for b in loader]
    assert_same_clips(batches, list(ref_loader))


@pytest.mark.parametrize("train", [True, False])
def test_frames_transformed_on_device_match_pil(tree, tmp_path, train):
    """GPU loaders send decoded frames; clips_on_device (run here on the CPU) resizes, crops and
    flips them as the PIL pipeline does: the same geometry, pixels within 2 levels, few differing;
    everything else in the batch identical. S1 and S2 frames differ in size (the list path)."""
    from utils.data import to_device
    root = noisy_tree(tree)
    ds = GTEA61(root, ["S1", "S2"], "rgb_mmaps" if train else "rgb", train, seqLen=6, frameSize=24, mapSize=3)
    ref = list(make_loader(ds, 4, True, 0, 0))
    src = list(make_loader(ds, 4, True, 0, 0, normalize=False, source=True))
    assert isinstance(src[0]["rgb_src"], list) and src[0]["rgb_src"][0].dtype == torch.uint8
    got = [to_device(b, torch.device("cpu")) for b in src]
    levels = torch.tensor(E_STD).view(3, 1, 1) * 255
    for r, g in zip(ref, got):
        assert g.keys() == r.keys()
        for k in r:
            if k != "rgb":
                assert torch.equal(r[k], g[k]), k
        diff = ((g["rgb"] - r["rgb"]) * levels).abs()  # in pixel levels
        assert g["rgb"].shape == r["rgb"].shape and diff.max() < 2.01 and (diff > 0.5).float().mean() < 0.2


def test_gpu_loaders_send_uint8_cpu_loaders_float(tiny_root, tmp_path):
    args = E.base_parser("ms_op", "").parse_args(
        ["--datasetDir", str(tiny_root), "--outDir", str(tmp_path), "--seqLen", "4", "--frameSize", "32",
         "--numWorkers", "0", "--cacheDir", "none", "--trainUsers", "S1", "--dataOnDevice", "off"])
    for device, cpu_transforms, normalize, source, pin in [("cpu", False, True, False, False),
                                                           ("cuda", False, False, True, True),
                                                           ("cuda", True, False, False, True)]:
        args.cpuTransforms = cpu_transforms
        exp = E.Experiment("ms_op", args, 2, torch.device(device), "bf16", None, None)
        train_loader, test_loader = E.stage_loaders(exp, *E.stage_datasets(exp))
        for loader in (train_loader, test_loader):
            assert loader.dataset.normalize is normalize and loader.dataset.source is source
            assert loader.pin_memory is pin


class _Niceness(torch.utils.data.Dataset):
    """Each item: the priority of the process that made it."""
    def __len__(self):
        return 2

    def __getitem__(self, i):
        return {"nice": os.nice(0), "label": i}


def test_cpu_training_workers_run_at_lower_priority(tiny_root, tmp_path, monkeypatch):
    """CPU runs lower the training DataLoader workers' priority by CPU_WORKER_NICE (the step's
    threads keep their cores); GPU runs and the test loader leave it; a worker really runs there."""
    from utils import data as D
    parent = os.nice(0)
    loader = D.make_loader(_Niceness(), 2, False, 0, num_workers=1, nice=3)
    assert next(iter(loader))["nice"].tolist() == [min(parent + 3, 19)] * 2
    assert next(iter(D.make_loader(_Niceness(), 2, False, 0, num_workers=1)))["nice"].tolist() == [parent] * 2
    seen = []
    monkeypatch.setattr(D, "lower_priority", lambda nice: seen.append(nice) or (lambda _: None))
    args = E.base_parser("ms_op", "").parse_args(
        ["--datasetDir", str(tiny_root), "--outDir", str(tmp_path), "--seqLen", "4", "--frameSize", "32",
         "--numWorkers", "1", "--cacheDir", "none", "--trainUsers", "S1", "--dataOnDevice", "off"])
    for device, expected in (("cpu", [D.CPU_WORKER_NICE]), ("cuda", [])):
        seen.clear()
        exp = E.Experiment("ms_op", args, 2, torch.device(device), "fp32", None, None)
        E.stage_loaders(exp, *E.stage_datasets(exp))
        assert seen == expected, device
    assert D.CPU_WORKER_NICE > 0


def test_meter_reads_device_tensors_once_with_float_arithmetic():
    from utils.train import Meter
    lazy, eager = Meter(), Meter()
    values = [(torch.tensor(0.3), 3), (torch.tensor(1.7), 5), (0.25, 2)]
    for v, n in values:
        lazy.add("x", v, n)
        eager.add("x", float(v), n)
    assert lazy.mean("x") == eager.mean("x") == pytest.approx((0.3 * 3 + 1.7 * 5 + 0.25 * 2) / 10, rel=1e-6)
    lazy.add("x", torch.tensor(1.0), 10)  # added after a read: read on the next mean
    assert lazy.mean("x") == pytest.approx((0.3 * 3 + 1.7 * 5 + 0.25 * 2 + 10) / 20, rel=1e-6)
    assert math.isnan(lazy.mean("missing"))


def test_epoch_loss_check_catches_a_nan_without_a_per_step_read(tmp_path):
    from utils.errors import NonFiniteLossError
    from utils.train import Meter, check_finite

    class Exp:
        stage, stage_dir, device = 2, str(tmp_path), torch.device("cpu")
    meter = Meter()
    meter.add("total", torch.tensor(1.0), 2)
    check_finite(meter, "total", Exp, 1)
    meter.add("total", torch.tensor(float("nan")), 2)
    with pytest.raises(NonFiniteLossError, match="non-finite loss in stage 2 epoch 3"):
        check_finite(meter, "total", Exp, 3)


# ----------------------------------------------------------------------------- fp32 unchanged

def fingerprint(stage_dir, log_columns):
    sd = torch.load(os.path.join(stage_dir, "last.pth"), weights_only=False)["model"]
    h = hashlib.sha256()
    sums = {}
    for k in sorted(sd):
        t = sd[k].detach().cpu().contiguous()
        h.update(k.encode())
        h.update(t.numpy().tobytes())
        if t.is_floating_point():
            sums[k] = float(t.double().abs().sum())
    with open(os.path.join(stage_dir, "log.csv")) as f:
        row = next(csv.DictReader(f))
    return h.hexdigest(), [row[c] for c in log_columns], sums


def cpu_identity():
    """(vendor_id, set of flags) of this machine's CPU, from /proc/cpuinfo."""
    vendor, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "vendor_id":
                    vendor = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                if vendor and flags:
                    break
    except OSError:
        pass
    return vendor, flags


def same_cpu_kind(recorded):
    """The recording machine's kind: same vendor, and the instruction-set flags that choose
    oneDNN's and ATen's kernels (AMX, AVX-512 bf16 / VNNI / BW...) present or absent alike."""
    vendor, flags = cpu_identity()
    return vendor == recorded["vendor_id"] and all((f in flags) == (f in recorded["flags"])
                                                   for f in recorded["decisive_flags"])


def test_same_cpu_kind_compares_vendor_and_decisive_flags(monkeypatch):
    recorded = {"vendor_id": "GenuineIntel", "flags": ["avx512f", "amx_bf16"],
                "decisive_flags": ["avx512f", "avx512_bf16", "amx_bf16"]}
    for vendor, flags, same in [("GenuineIntel", {"avx512f", "amx_bf16", "sse"}, True),
                                ("AuthenticAMD", {"avx512f", "amx_bf16"}, False),
                                ("GenuineIntel", {"avx512f", "avx512_bf16", "amx_bf16"}, False),  # an extra one
                                ("GenuineIntel", {"avx512f"}, False)]:
        monkeypatch.setattr(sys.modules[__name__], "cpu_identity", lambda v=vendor, f=flags: (v, f))
        assert same_cpu_kind(recorded) == same, (vendor, flags)


@pytest.fixture(scope="module")
def golden_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("golden") / "syn"
    subprocess.run([sys.executable, "-m", "datasets.prepare.synthetic", "--outDir", str(d), "--classes", "3",
                    "--instances", "1", "--size", "80x60"], cwd=ROOT, check=True, capture_output=True)
    return d


@pytest.mark.parametrize("cache", ["none", "dir"])
def test_fp32_results_unchanged(golden_data, tmp_path, cache):
    """The tiny ms_op run (stages 1 and 2) recorded in tests/data/speed_golden.json with the code
    before the speed work, rerun with and without the frame cache: the same weights and log,
    bit for bit on the machine kind that recorded it (same torch, thread count, CPU vendor and
    instruction set: the kernels' results depend on all of them), to float tolerance elsewhere.
    The recording used the OP head's pooled input, so this run asks for it."""
    golden = json.loads(GOLDEN.read_text())
    out = tmp_path / "run"
    cache_arg = "none" if cache == "none" else str(tmp_path / "fc")
    E.run("ms_op", ["--datasetDir", str(golden_data), "--outDir", str(out), "--numEpochs", "1",
                    "--pretrained", "none", "--frameSize", "64", "--seqLen", "4", "--trainBatchSize", "4",
                    "--memSize", "16", "--valBatchSize", "8", "--numWorkers", "0", "--precision", "fp32",
                    "--camVideos", "0", "--cacheDir", cache_arg, "--opInput", "pooled", "--keepLast"])
    if cache == "dir":
        assert any((tmp_path / "fc").rglob("*.frame"))
    args = json.loads((out / "stage2" / "args.json").read_text())
    assert args["precision"] == "fp32" and args["cacheDir"] == (None if cache == "none" else cache_arg)
    threads = str(torch.get_num_threads())
    same_kernels = (golden["torch"] == torch.__version__ and threads in golden["threads"]
                    and golden["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
                    and same_cpu_kind(golden["cpu"]))
    for stage in ("stage1", "stage2"):
        sha, log, sums = fingerprint(out / stage, golden["log_columns"])
        if same_kernels:
            assert sha == golden["threads"][threads][stage]["sha256"], stage
            assert log == golden["threads"][threads][stage]["log"], stage
        else:
            for k, v in golden["threads"]["1"][stage]["abs_sums"].items():
                assert sums[k] == pytest.approx(v, rel=1e-3, abs=1e-5), (stage, k)


def test_frozen_trunk_in_chunks_gives_the_whole_batchs_maps(monkeypatch):
    """CPU fp32 training: the frozen stem..layer3 run CPU_TRUNK_CHUNK frames at a time (20 frames:
    chunks of 8, 8 and 4), and layer4's maps equal those of the definition on the whole batch (the
    same bits on the machine this was written on; float tolerance stated for other kernels)."""
    from models.backbone import ResNet34Backbone
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = speed.install(ResNet34Backbone("none").eval(), torch.device("cpu"), "fp32")
    for p in b.parameters():
        p.requires_grad = False
    for p in b.layer4.parameters():  # stage 2: layer4 trains, the trunk is frozen
        p.requires_grad = True
    x = torch.randn(20, 3, 64, 64)
    calls = []
    plain = speed._plain_trunk
    monkeypatch.setattr(speed, "_plain_trunk", lambda bb, frames: calls.append(len(frames)) or plain(bb, frames))
    assert speed.chunked(b, x)
    f_bn, f_nobn = b.layer4_maps(x)
    assert calls == [8, 8, 4]
    monkeypatch.setattr(speed, "CPU_TRUNK_CHUNK", 0)  # the definition, all frames at once
    ref_bn, ref_nobn = b.layer4_maps(x)
    for got, ref in ((f_bn, ref_bn), (f_nobn, ref_nobn)):
        assert got.shape == ref.shape == (20, 512, 2, 2)
        assert torch.allclose(got, ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item())
    assert f_bn.requires_grad  # layer4 still trains
    with torch.no_grad():  # evaluation keeps the definition
        calls.clear()
        monkeypatch.setattr(speed, "CPU_TRUNK_CHUNK", 8)
        assert not speed.chunked(b, x)


def test_install_changes_instances_not_classes():
    """install puts the speed routes into the given model's instances only: no class changes,
    so a model built afterwards is the plain definition; the state dict keeps its keys and
    tensors; an fp32 model on the CPU computes exactly what the definition computes."""
    import copy

    import torch.nn.functional as F
    from models import ConvLSTMCell, FlowResNet34, ResNet34Backbone
    from models.recipe import build_model
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("rgb", 3, {"memSize": 8, "frameSize": 32}, heads=False).eval()
        flow = FlowResNet34(3, pretrained="none")
    plain = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    speed.install(model, cpu, "bf16")
    speed.install(flow, cpu, "bf16")
    bb, cell = model.egornn.backbone, model.egornn.convlstm
    assert bb.trunk.__func__ is speed.backbone_trunk and flow.trunk.__func__ is speed.flow_trunk
    assert cell.conv2d is speed.conv3x3
    assert type(bb.layer4[1].conv2) is speed.FastGradConv2d
    assert type(bb.layer4[0].downsample[0]) is torch.nn.Conv2d and type(bb.layer3[0].conv1) is torch.nn.Conv2d
    # the classes are the definitions
    assert ConvLSTMCell.conv2d is F.conv2d and ConvLSTMCell.__dict__["conv2d"].__func__ is F.conv2d
    for cls, name in ((ResNet34Backbone, "trunk"), (FlowResNet34, "trunk")):
        assert cls.__dict__[name].__module__ != speed.__name__
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = build_model("rgb", 3, {"memSize": 8, "frameSize": 32}, heads=False)
    assert "trunk" not in vars(fresh.egornn.backbone) and "conv2d" not in vars(fresh.egornn.convlstm)
    assert {n: type(m) for n, m in fresh.named_modules()} == {n: type(m) for n, m in plain.named_modules()}
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    fp32 = speed.install(copy.deepcopy(plain), cpu, "fp32")
    x = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fp32(x)["logits"], plain(x)["logits"])


# ----------------------------------------------------------------------------- training step

def tiny_experiment(kind, stage, precision, root, tmp_path, extra=(), frame_size=32):
    args = E.base_parser(kind, "").parse_args(
        ["--datasetDir", str(root), "--outDir", str(tmp_path / "out"), "--seqLen", "4", "--frameSize", str(frame_size),
         "--memSize", "8", "--trainBatchSize", "2", "--numWorkers", "0", "--pretrained", "none",
         "--cacheDir", "none", "--trainUsers", "S1", *extra])
    exp = E.Experiment(kind, args, stage, torch.device("cpu"), precision, None, None)
    train_set, test_set = E.stage_datasets(exp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = E.prepare_model(exp, exp.build_model("none"))
    loader, _ = E.stage_loaders(exp, train_set, test_set)
    return exp, model, next(iter(loader))


def step_and_check(exp, model, batch):
    """One utils.train.train_step; returns the names of the parameters it changed and checks
    that frozen layers built no graph and got no gradient."""
    from models.stages import trainable_names
    torch.manual_seed(0)
    trainable = set(trainable_names(model, exp.stage)["main"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    seen = {}
    bb = model.egornn.backbone
    # what enters layer4 is layer3's output (however layer3 ran: modules or fused, models/speed.py)
    hooks = [bb.layer4[0].downsample.register_forward_pre_hook(lambda m, i: seen.__setitem__("layer3", i[0])),
             bb.register_forward_hook(lambda m, i, o: seen.__setitem__("backbone", o))]
    optimizer = exp.make_optimizer(model)
    exp.set_train_mode(model)
    out, losses = train_step(exp, model, batch, optimizer, torch.Generator().manual_seed(0))
    for h in hooks:
        h.remove()
    assert seen["layer3"].grad_fn is None and not seen["layer3"].requires_grad
    if exp.stage == 1:
        assert all(t.grad_fn is None for t in seen["backbone"])
    for n, p in model.named_parameters():
        if n not in trainable:
            assert p.grad is None, n
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    for v in losses.values():
        assert torch.isfinite(v) and v.dtype == torch.float32
    for state in optimizer.state.values():
        assert all(t.dtype == torch.float32 for t in state.values() if torch.is_tensor(t) and t.dim())
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed <= trainable
    return out, changed, trainable


@pytest.fixture
def tiny_root(tree):
    return noisy_tree(tree, videos=2, n=8)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stage", [1, 2])
def test_training_step_trains_only_the_stage(tiny_root, tmp_path, precision, stage):
    exp, model, batch = tiny_experiment("ms_op", stage, precision, tiny_root, tmp_path)
    assert speed.channels_last(exp.device, precision) == (precision == "bf16")
    out, changed, trainable = step_and_check(exp, model, batch)
    # fc.bias is trainable but gets no gradient: the CAM reads only rows of fc.weight
    assert changed == trainable - {"egornn.backbone.fc.bias"}
    assert out["attention"].dtype == out["cell_pooled"].dtype == torch.float32
    assert ("ms_out" in out and "op_logits" in out) == (stage == 2)
    if precision == "bf16":
        assert out["logits"].dtype == torch.bfloat16  # the forward really ran under autocast
        conv = model.egornn.backbone.layer4[0].conv1.weight
        assert conv.is_contiguous(memory_format=torch.channels_last)


def test_bf16_convlstm_state_stays_float32(tiny_root, tmp_path, monkeypatch):
    from models.convlstm import ConvLSTMCell
    exp, model, batch = tiny_experiment("rgb", 1, "bf16", tiny_root, tmp_path)
    states = []
    step = ConvLSTMCell.step

    def spy(self, gx, state, w_h=None):
        h, c = step(self, gx, state, w_h)
        states.append((h.dtype, c.dtype))
        return h, c

    monkeypatch.setattr(ConvLSTMCell, "step", spy)
    step_and_check(exp, model, batch)
    assert states and set(states) == {(torch.float32, torch.float32)}


def test_backend_choices_for_cuda_and_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert speed.channels_last(cuda, "fp32") and speed.channels_last(cuda, "bf16")
    assert speed.channels_last(cpu, "bf16") and not speed.channels_last(cpu, "fp32")
    old = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        E.configure_backends(cpu)
        assert not torch.backends.cudnn.benchmark
        E.configure_backends(cuda)
        assert torch.backends.cudnn.benchmark
    finally:
        torch.backends.cudnn.benchmark = old


# ----------------------------------------------------------------------------- bench.py

def test_bench_tiny_writes_json(golden_data, tmp_path):
    import bench
    path = tmp_path / "b.json"
    report = bench.main(["--model", "ms_op", "--stage", "2", "--seqLen", "4", "--batchSize", "2",
                         "--frameSize", "32", "--memSize", "8", "--steps", "1", "--warmup", "1",
                         "--numWorkers", "1", "--precision", "fp32", "bf16", "--datasetDir", str(golden_data),
                         "--cacheDir", str(tmp_path / "fc"), "--limit", "--json", str(path)])
    data = json.loads(path.read_text())
    assert data["results"].keys() == {"fp32", "bf16"} == report["results"].keys()
    for r in data["results"].values():
        for k in ("compute_clips_per_s", "data_clips_per_s", "train_clips_per_s", "infer_clips_per_s",
                  "ratio_train_to_compute", "peak_rss_mb"):
            assert isinstance(r[k], float) and np.isfinite(r[k]) and r[k] > 0, k
        assert r["ratio_train_to_compute"] == pytest.approx(r["train_clips_per_s"] / r["compute_clips_per_s"])
        assert r["train_images_per_s"] == pytest.approx(4 * r["train_clips_per_s"])
        assert r["limit_images_per_s"] > 0
        assert r["ratio_train_to_limit"] == pytest.approx(r["train_images_per_s"] / r["limit_images_per_s"])
        assert r["cuda_max_allocated_mb"] is None
    assert data["results"]["bf16"]["channels_last"] and not data["results"]["fp32"]["channels_last"]
    assert data["config"]["model"] == "ms_op" and data["machine"]["cpu_count"] >= 1
    assert any((tmp_path / "fc").rglob("*.frame"))


# ----------------------------------------------------------------------------- bf16 fast weight gradient

@pytest.mark.parametrize("stride,channels_last,size", [(1, True, 7), (1, False, 9), (2, False, 14), (2, True, 13)])
def test_fast_weight_gradient_exact_in_float64(stride, channels_last, size):
    from models.speed import Conv3x3
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: Conv3x3.apply(x, w, b, stride), (x, w, b))


def test_fast_weight_gradient_only_for_cpu_bf16_training():
    from models.speed import fast_path
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3, requires_grad=True)
    assert not fast_path(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast_path(x, w)
        assert not fast_path(x, w.detach())
        with torch.no_grad():
            assert not fast_path(x, w)
    with torch.autocast("cpu", dtype=torch.float16):
        assert not fast_path(x, w)


def test_bf16_step_same_forward_close_gradients_with_fast_weight_gradient(tiny_root, tmp_path, monkeypatch):
    """The fast weight gradient changes nothing in the forward (same losses, bit for bit) and
    gives the weight gradients of oneDNN's bf16 convolution backward to bf16 precision."""
    import copy

    exp, model, batch = tiny_experiment("ms_op", 2, "bf16", tiny_root, tmp_path, frame_size=96)  # 3x3 maps
    exp.set_train_mode(model)
    uses = []
    forward = speed.Conv3x3.forward
    monkeypatch.setattr(speed.Conv3x3, "forward",
                        staticmethod(lambda ctx, *a: uses.append(a[0].shape) or forward(ctx, *a)))
    results = {}
    for enabled in (True, False):
        monkeypatch.setattr(speed, "ENABLED", enabled)  # the fused frozen trunk stays on in both
        m = copy.deepcopy(model)
        torch.manual_seed(0)
        _, losses = train_step(exp, m, batch, exp.make_optimizer(m), torch.Generator().manual_seed(0))
        results[enabled] = ({k: v.item() for k, v in losses.items()},
                            {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    # layer4: 6 convolutions; ConvLSTM: the input convolution and 3 hidden steps
    assert len(uses) == 10
    (loss_fast, grads_fast), (loss_ref, grads_ref) = results[True], results[False]
    assert loss_fast == loss_ref
    assert grads_fast.keys() == grads_ref.keys()
    assert {"egornn.convlstm.conv_hi.weight", "egornn.convlstm.conv_xi.weight",
            "egornn.backbone.layer4.1.conv1.weight", "egornn.backbone.layer4.0.conv1.weight"} <= grads_ref.keys()
    for n in grads_ref:
        g, r = grads_fast[n].float(), grads_ref[n].float()
        assert g.dtype == torch.float32
        assert (g - r).norm() <= 0.02 * r.norm() + 1e-6, n


def test_fused_frozen_trunk_close_to_autocast_and_only_when_frozen(monkeypatch):
    """stem..layer3 under CPU bf16 autocast run with folded BatchNorms and fused ReLU / residual
    additions (models/speed.py): the result is the autocast one to bf16 precision, and the fused
    path is taken only when nothing there needs a gradient and every BatchNorm is in eval mode."""
    from models import ResNet34Backbone
    if speed._pointwise_ops() is None:
        x = torch.randn(1, 3, 32, 32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not speed.frozen_bf16(x, [])  # never taken where oneDNN cannot run it
        pytest.skip("oneDNN has no fused bf16 convolutions on this CPU (needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT)")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bb = ResNet34Backbone("none")
    for m in bb.modules():  # BatchNorm statistics of a trained network, not 0 / 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    bb = speed.install(bb.eval(), torch.device("cpu"), "bf16")  # channels_last weights, the fused trunk
    for p in bb.parameters():
        p.requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        exact = bb.double()(x.double())[1]
        bb.float()
    used = []
    fuse = speed.basic_block
    monkeypatch.setattr(speed, "basic_block", lambda b, x: used.append(1) or fuse(b, x))
    outputs = {}
    for on in (True, False):
        monkeypatch.setattr(speed, "FUSE_FROZEN", on)
        used.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs[on] = bb(x)[1].double()
        assert len(used) == (3 + 4 + 6 if on else 0)  # the blocks of layer1..layer3
    for out in outputs.values():
        assert (out - exact).norm() <= 0.02 * exact.norm()
    assert (outputs[True] - outputs[False]).norm() <= 0.02 * exact.norm()
    # not fused: fp32, a trunk parameter that trains, a BatchNorm in training mode
    monkeypatch.setattr(speed, "FUSE_FROZEN", True)
    x = torch.randn(1, 3, 32, 32)
    assert not speed.frozen_bf16(x, [bb.layer1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert speed.frozen_bf16(x, [bb.layer1])
        bb.layer1[0].conv1.weight.requires_grad_(True)
        assert not speed.frozen_bf16(x, [bb.layer1])
        bb.layer1[0].conv1.weight.requires_grad_(False)
        bb.layer1[2].bn2.train()
        assert not speed.frozen_bf16(x, [bb.layer1])

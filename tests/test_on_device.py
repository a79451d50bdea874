"""--dataOnDevice (utils/on_device.py): the training set held on the device gives the very batches
of the DataLoader path with the device-side transforms (run on the CPU here), for 2 epochs, in one
process and shared out as under torchrun; a tiny main_ms_op.py run with it trains and writes its
files; `on` refuses, in one line, a set that does not fit and the flow modality."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from utils.data import make_loader, set_epoch
from utils.on_device import DeviceLoader, estimate_bytes, use_on_device
from utils.data import to_device

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
CPU = torch.device("cpu")
W, H = 80, 60


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "syn"
    subprocess.run([PY, "-m", "datasets.prepare.synthetic", "--outDir", str(d), "--classes", "3", "--instances", "2",
                    "--size", f"{W}x{H}"], cwd=ROOT, check=True, capture_output=True)
    return d


def train_set(data, modality, seqLen=4):
    from datasets import GTEA61
    return GTEA61(data, ["S1", "S3", "S4"], modality, train=True, seqLen=seqLen, frameSize=48, mapSize=7)


def epochs(loader, n=2):
    out = []
    for e in range(n):
        set_epoch(loader, e)
        out.append([to_device(dict(b), CPU) for b in loader])
    return out


@pytest.mark.parametrize("modality", ["rgb", "rgb_mmaps"])
def test_batches_equal_the_dataloader_path(data, modality):
    ds = train_set(data, modality)
    ref = epochs(make_loader(ds, 4, True, seed=5, num_workers=0, normalize=False, source=True))
    got = epochs(DeviceLoader(ds, 4, seed=5, device=CPU))
    keys = {"rgb", "label", "index", "frame_numbers"} | ({"mmaps"} if modality == "rgb_mmaps" else set())
    for ref_epoch, got_epoch in zip(ref, got):
        assert len(got_epoch) == len(ref_epoch) == -(-len(ds) // 4)
        for r, g in zip(ref_epoch, got_epoch):
            assert set(r) == set(g) == keys
            for k in keys:
                assert r[k].dtype == g[k].dtype and torch.equal(r[k], g[k]), k
            assert g["rgb"].std() > 0.1  # real images (normalised), so equality means something
    # the two epochs draw other clip orders (and so other crops)
    assert [b["index"].tolist() for b in got[0]] != [b["index"].tolist() for b in got[1]]


def test_processes_share_each_global_batch(data):
    """Under torchrun each process holds the whole set and takes its rows of every global batch."""
    ds = train_set(data, "rgb")
    whole = epochs(DeviceLoader(ds, 4, seed=2, device=CPU), 1)[0]
    parts = [epochs(DeviceLoader(ds, 4, seed=2, device=CPU, process=(r, 2)), 1)[0] for r in (0, 1)]
    for step, b in enumerate(whole):
        for k in ("rgb", "label", "index", "frame_numbers"):
            assert torch.equal(torch.cat([parts[0][step][k], parts[1][step][k]]), b[k]), (step, k)


def test_size_estimate_and_choice(data):
    ds = train_set(data, "rgb_mmaps", seqLen=3)
    need = len(ds) * 3 * W * H * 3  # every clip: seqLen frames of W x H x RGB bytes
    assert estimate_bytes(ds) == need
    cuda = torch.device("cuda")  # `free` given: nothing touches a GPU
    assert use_on_device("auto", ds, cuda, free=4 * need)
    assert not use_on_device("auto", ds, cuda, free=4 * need - 1)
    assert not use_on_device("auto", ds, CPU, free=10**12) and not use_on_device("off", ds, cuda, free=10**12)
    assert use_on_device("on", ds, CPU, free=need)
    with pytest.raises(Exception, match=r"--dataOnDevice on: .* need .* MB .* free"):
        use_on_device("on", ds, CPU, free=need - 1)
    with pytest.raises(Exception, match=r"--dataOnDevice on: the flow modality"):
        use_on_device("on", train_set(data, "flow"), CPU, free=10**12)
    assert not use_on_device("auto", train_set(data, "flow"), cuda, free=10**12)


TINY = ["--pretrained", "none", "--frameSize", "48", "--seqLen", "4", "--trainBatchSize", "4", "--memSize", "8",
        "--valBatchSize", "8", "--numWorkers", "0", "--precision", "fp32", "--camVideos", "0", "--numEpochs", "1",
        "--dataOnDevice", "on"]


def test_ms_op_trains_with_data_on_device(data, tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([PY, "main_ms_op.py", "--datasetDir", str(data), "--outDir", str(out), *TINY], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("training set on cpu:") == 2  # stage 1 (rgb) and stage 2 (rgb_mmaps)
    for stage in ("stage1", "stage2"):
        for f in ("args.json", "log.csv", "best_model.pth", "summary.json"):
            assert (out / stage / f).is_file(), (stage, f)
    assert (out / "stage2" / "log.csv").read_text().splitlines()[1].split(",")[7] != ""  # op_loss written


def test_on_that_cannot_fit_is_a_one_line_error(data, tmp_path, monkeypatch, capsys):
    """The device's free memory made smaller than the set: one line, exit 2, nothing written."""
    import utils.on_device
    from utils.errors import run_cli
    from utils.experiment import run
    monkeypatch.setattr(utils.on_device, "free_bytes", lambda device: 1000)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        run_cli(lambda argv: run("ms_op", argv), ["--datasetDir", str(data), "--outDir", str(out), "--stage", "1",
                                                  "--cacheDir", "none", *TINY])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --dataOnDevice on: the decoded training frames need ") and \
        "0.00 MB free" in err[-1], err
    assert not (out / "stage1" / "log.csv").exists()

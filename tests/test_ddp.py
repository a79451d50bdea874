"""torchrun on the CPU (gloo): 2 processes train what 1 process trains, and resume exactly.

SAMSOP-Net (main_ms_op.py, both stages) draws dropout masks and order-prediction tasks inside the
model; its 7 training clips in batches of 3 make shares of 2 + 1 and a last batch of 1 clip, which
process 1 repeats at weight 0; the 3 test videos are evaluated 2 + 1. The BatchNorms that train
(flow models) are checked on their own: a random-init flow ResNet on the smooth synthetic flow is
so ill-conditioned that fp32 and fp64 gradients of one process already differ by 3%."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
TINY = ["--pretrained", "none", "--frameSize", "32", "--seqLen", "4", "--memSize", "8", "--trainBatchSize", "3",
        "--valBatchSize", "2", "--numWorkers", "0", "--precision", "fp32", "--numEpochs", "2", "--cacheDir", "none",
        "--camVideos", "0", "--keepLast"]
STAGES = ("stage1", "stage2")


def launch(nproc, data, out, *extra):
    """main_flow.py as a user starts it: plain python for one process, torchrun for more."""
    head = [PY] if nproc == 1 else [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.Popen([*head, "main_ms_op.py", "--datasetDir", str(data), "--outDir", str(out), *TINY, *extra],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p, timeout=240):
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, err[-3000:]
    return out


def read_log(d, stage="stage1"):
    with open(d / stage / "log.csv") as f:
        return list(csv.DictReader(f))


def weights(d, stage):
    return torch.load(d / stage / "last.pth", map_location="cpu", weights_only=True, mmap=True)["model"]


def descendants(pid):
    kids = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(k) for k in f.read().split()]
    except OSError:
        pass
    return kids + [g for k in kids for g in descendants(k)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process and two processes (both stages), and two processes killed (SIGKILL) in stage 1
    epoch 2 then resumed (stage 1 only: the resume is the same in any stage)."""
    tmp = tmp_path_factory.mktemp("ddp")
    data = tmp / "syn"
    subprocess.run([PY, "-m", "datasets.prepare.synthetic", "--outDir", str(data), "--classes", "3", "--instances", "1",
                    "--size", "80x60"], cwd=ROOT, check=True, capture_output=True)
    logs = {"one": finish(launch(1, data, tmp / "one")), "two": finish(launch(2, data, tmp / "two"))}
    killed = launch(2, data, tmp / "killed", "--stage", "1")
    deadline = time.time() + 240
    while not ((tmp / "killed" / "stage1" / "log.csv").exists() and len(read_log(tmp / "killed")) >= 1):
        assert killed.poll() is None and time.time() < deadline, "the run ended before it could be killed"
        time.sleep(0.05)
    victims = descendants(killed.pid) + [killed.pid]
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed.communicate()
    epochs_when_killed = len(read_log(tmp / "killed"))
    shutil.copytree(tmp / "killed", tmp / "killed_one")  # the same interrupted run, resumed by one process
    logs["resumed"] = finish(launch(2, data, tmp / "killed", "--stage", "1", "--resume"))
    logs["resumed_one"] = finish(launch(1, data, tmp / "killed_one", "--stage", "1", "--resume"))
    return tmp, logs, epochs_when_killed


def test_two_processes_train_what_one_trains(runs):
    tmp, logs, _ = runs
    for stage in STAGES:
        one, two = weights(tmp / "one", stage), weights(tmp / "two", stage)
        assert one.keys() == two.keys()
        for k in one:  # fp32 rounding only: gradients summed over processes in another order
            assert torch.allclose(one[k], two[k], rtol=1e-4, atol=1e-5), \
                (stage, k, (one[k].double() - two[k].double()).abs().max().item())
        log1, log2 = read_log(tmp / "one", stage), read_log(tmp / "two", stage)
        assert len(log1) == len(log2) == 2
        for r1, r2 in zip(log1, log2):
            for k in ("train_acc", "test_acc", "op_acc"):
                assert r1[k] == r2[k], (stage, k, r1, r2)
            for k in ("train_loss", "test_loss", "ms_loss", "op_loss"):
                if r1[k]:
                    assert float(r1[k]) == pytest.approx(float(r2[k]), rel=1e-5, abs=1e-6), (stage, k, r1, r2)
        s1, s2 = (json.loads((tmp / d / stage / "summary.json").read_text()) for d in ("one", "two"))
        assert s1["num_test_videos"] == s2["num_test_videos"] == 3
        # what each process scored: every test video once, 2 + 1 (its accuracy cannot show a duplicate)
        assert s1["test_videos_per_process"] == [3] and s2["test_videos_per_process"] == [2, 1]
        assert s1["num_train_videos"] == s2["num_train_videos"] == 7
        assert json.loads((tmp / "one" / stage / "args.json").read_text())["world_size"] == 1
        assert json.loads((tmp / "two" / stage / "args.json").read_text())["world_size"] == 2
    # process 1 prints nothing: each epoch is reported once
    assert sum(line.startswith("epoch   1") for line in logs["two"].splitlines()) == 2, logs["two"]
    assert "2 processes (gloo)" in logs["two"]


def test_two_processes_resume_exactly_after_sigkill(runs):
    tmp, logs, epochs_when_killed = runs
    assert epochs_when_killed == 1, "killed too late to test a resume"
    assert "resuming stage 1 from" in logs["resumed"] and "after epoch 1" in logs["resumed"]
    keep = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "ms_loss", "op_loss", "op_acc")
    two, resumed = weights(tmp / "two", "stage1"), weights(tmp / "killed", "stage1")
    for k in two:
        assert torch.equal(two[k], resumed[k]), k
    assert [{k: r[k] for k in keep} for r in read_log(tmp / "two")] == \
           [{k: r[k] for k in keep} for r in read_log(tmp / "killed")]


def test_a_two_process_run_resumes_with_one_process(runs):
    """The clip order, augmentation and in-model draws belong to the global batch, so another
    number of processes continues the same run: one process ends where one process alone ends
    (fp32 rounding apart), with the same accuracies."""
    tmp, logs, epochs_when_killed = runs
    assert epochs_when_killed == 1 and "after epoch 1" in logs["resumed_one"]
    one, resumed = weights(tmp / "one", "stage1"), weights(tmp / "killed_one", "stage1")
    for k in one:
        assert torch.allclose(one[k], resumed[k], rtol=1e-4, atol=1e-5), \
            (k, (one[k].double() - resumed[k].double()).abs().max().item())
    for r1, r2 in zip(read_log(tmp / "one"), read_log(tmp / "killed_one"), strict=True):
        assert (r1["train_acc"], r1["test_acc"], r1["op_acc"]) == (r2["train_acc"], r2["test_acc"], r2["op_acc"])
    assert json.loads((tmp / "killed_one" / "stage1" / "args.json").read_text())["world_size"] == 1


# ----------------------------------------------------------------------------- in one process

class _Indices(torch.utils.data.Dataset):
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"index": i}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("size", [3, 4, 5, 7])
def test_each_test_and_val_video_is_evaluated_by_one_process(monkeypatch, world, size):
    """The training scripts' loaders (utils/experiment.stage_loaders) as process r of `world`
    builds them: over the processes, the test and validation sets' indices come once each."""
    from types import SimpleNamespace
    from utils import distributed
    from utils.experiment import stage_loaders
    args = SimpleNamespace(trainBatchSize=2, valBatchSize=2, seed=0, numWorkers=0, dataOnDevice="off")
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    test_seen, val_seen = [], []
    for r in range(world):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        exp = SimpleNamespace(args=args, device=torch.device("cpu"), val_set=_Indices(size))
        _, test = stage_loaders(exp, _Indices(10), _Indices(size))
        test_seen += [i for batch in test for i in batch["index"].tolist()]
        val_seen += [i for batch in exp.val_loader for i in batch["index"].tolist()]
    assert sorted(test_seen) == list(range(size)) and sorted(val_seen) == list(range(size))

def test_shares_of_a_global_batch_are_what_one_process_draws():
    from utils.data import EpochSampler
    from utils.distributed import ShareBatchSampler, share_of
    sampler = EpochSampler(11, True, seed=3)
    sampler.set_epoch(2)
    single = list(ShareBatchSampler(sampler, 4))
    assert [len(b) for b in single] == [4, 4, 3]
    for world in (2, 3, 5):
        per_rank = [list(ShareBatchSampler(sampler, 4, r, world)) for r in range(world)]
        for step, batch in enumerate(single):
            shares = [share_of(len(batch), r, world) for r in range(world)]
            real = [per_rank[r][step] for r in range(world) if shares[r].weight == 1]
            assert sum(real, []) == batch  # the real shares, in rank order, are the batch
            for r in range(world):
                if shares[r].weight == 0:  # an empty share runs the batch's last clip, at weight 0
                    assert per_rank[r][step] == batch[-1:]
    assert share_of(3, 0, 2) == (0, 2, 3, 1.0) and share_of(3, 1, 2) == (2, 3, 3, 1.0)
    assert share_of(1, 1, 2) == (0, 1, 1, 0.0)


def test_random_draws_in_the_model_are_cut_from_the_global_batch():
    """Dropout masks and the order-prediction task of clips 0-2 and 3-4, each drawn under its
    share, are those of the 5 clips drawn at once; with the share of one process, nn.Dropout's."""
    import models
    from models.batch_share import Share, batch_share, share_dropouts
    from models.stages import set_train_mode
    torch.manual_seed(0)
    model = share_dropouts(models.SAMSOPNet(3, mem_size=8, ms="classification", op=True, pretrained="none",
                                            ms_size=1, op_input="pooled"))
    set_train_mode(model, 2)  # the stage-2 modes: dropouts on, BatchNorms frozen
    x = torch.randn(5, 4, 3, 32, 32)

    def run(rows, share):
        torch.manual_seed(7)
        with batch_share(share):
            return model(x[rows], generator=torch.Generator().manual_seed(1))

    whole = run(slice(0, 5), Share(0, 5, 5, 1.0))
    parts = [run(slice(0, 3), Share(0, 3, 5, 1.0)), run(slice(3, 5), Share(3, 5, 5, 1.0))]
    for key in ("logits", "op_logits", "op_target", "op_frames"):
        torch.testing.assert_close(torch.cat([p[key] for p in parts]), whole[key], rtol=1e-5, atol=1e-6)
    torch.manual_seed(7)
    plain = model(x, generator=torch.Generator().manual_seed(1))  # no share: nn.Dropout itself
    assert torch.equal(plain["logits"], whole["logits"]) and torch.equal(plain["op_target"], whole["op_target"])


# ----------------------------------------------------------------------------- synchronised BatchNorm

def _batchnorm_inputs():
    g = torch.Generator().manual_seed(0)
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(4, generator=g) + 0.5)
        bn.bias.copy_(torch.randn(4, generator=g))
    steps = [(torch.randn(5, 4, 3, 3, generator=g) * 2 + 1, torch.randn(5, 4, 3, 3, generator=g)),
             (torch.randn(1, 4, 3, 3, generator=g), torch.randn(1, 4, 3, 3, generator=g))]
    return bn, steps


def _batchnorm_worker(rank, world, port, out):
    """One process: its shares of a batch of 5 (3 + 2) and of a batch of 1 (process 1: weight 0)."""
    import torch.distributed as dist
    from models.batch_share import batch_share
    from utils.distributed import share_of, sync_batchnorms
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    bn, steps = _batchnorm_inputs()
    sync_batchnorms(bn).train()
    results = []
    for x, r in steps:
        share = share_of(len(x), rank, world)
        x = x[share.start:share.stop].clone().requires_grad_()
        with batch_share(share):
            y = bn(x)
        bn.weight.grad = bn.bias.grad = None
        (y * r[share.start:share.stop]).sum().mul(share.weight).backward()
        grads = torch.cat([bn.weight.grad, bn.bias.grad])
        dist.all_reduce(grads)
        results.append((share, y.detach(), x.grad, grads, bn.running_mean.clone(), bn.running_var.clone()))
    torch.save(results, out / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_sync_batchnorm_uses_the_global_batch(tmp_path):
    """Outputs, input and parameter gradients, running statistics: those of one BatchNorm2d over the
    whole batch, with a batch of 5 split 3 + 2 and a batch of 1 that process 1 repeats at weight 0."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_batchnorm_worker, args=(2, port, tmp_path), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    bn, steps = _batchnorm_inputs()
    bn.train()
    for step, (x, r) in enumerate(steps):
        x = x.clone().requires_grad_()
        y = bn(x)
        (y * r).sum().backward()
        real = [ranks[k][step] for k in range(2) if ranks[k][step][0].weight == 1]
        torch.testing.assert_close(torch.cat([t[1] for t in real]), y.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.cat([t[2] for t in real]), x.grad, rtol=1e-4, atol=1e-5)
        for k in range(2):
            torch.testing.assert_close(ranks[k][step][3], torch.cat([bn.weight.grad, bn.bias.grad]), rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(ranks[k][step][4], bn.running_mean, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(ranks[k][step][5], bn.running_var, rtol=1e-5, atol=1e-6)
        bn.weight.grad = bn.bias.grad = None

"""bench.py's figures follow from its own step times.

bench.py reads the time only through time.perf_counter. Here that clock is a fake one that moves
only when the work being timed happens: each training step (utils.train.train_step) takes
STEP_S, each evaluation forward INFER_S, and each clip the loader decodes CLIP_S. The rates in
the JSON must then be exactly what those times give, computed here by hand: a clip rate is
clips / seconds, the loader-fed training step pays for its batch's decoding (no workers)."""
import json
import time

import pytest

pytestmark = [pytest.mark.filterwarnings("ignore:pretrained='none'"),
              pytest.mark.usefixtures("one_thread_flush_denormal")]

STEP_S, INFER_S, CLIP_S = 1.5, 0.25, 0.125
BATCH, SEQ_LEN = 3, 4


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def perf_counter(self):
        return self.t

    def __getattr__(self, name):  # anything else bench may use from `time`
        return getattr(time, name)


@pytest.fixture
def data(tree):
    # 6 training videos (S1, S3, S4) and 2 test videos (S2): whole batches of 3
    for user in ("S1", "S2", "S3", "S4"):
        for cls in ("put_cup", "take_cup"):
            tree.video(user, cls, 1, 7)
    return tree.root


def test_bench_rates_follow_its_step_times(data, tmp_path, monkeypatch):
    import bench
    from datasets import GTEA61

    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    real_step, real_forward, real_get = bench.train_step, bench.Experiment.forward, GTEA61.get

    def step(*a, **k):
        out = real_step(*a, **k)
        clock.t += STEP_S
        return out

    def forward(self, model, batch, generator, train):
        out = real_forward(self, model, batch, generator, train)
        if not train:
            clock.t += INFER_S
        return out

    def get(self, *a, **k):
        clock.t += CLIP_S
        return real_get(self, *a, **k)
    monkeypatch.setattr(bench, "train_step", step)
    monkeypatch.setattr(bench.Experiment, "forward", forward)
    monkeypatch.setattr(GTEA61, "get", get)

    path = tmp_path / "b.json"
    bench.main(["--model", "rgb", "--stage", "1", "--seqLen", str(SEQ_LEN), "--batchSize", str(BATCH),
                "--frameSize", "32", "--memSize", "8", "--steps", "2", "--warmup", "1", "--repeats", "2",
                "--numWorkers", "0", "--precision", "fp32", "--datasetDir", str(data), "--cacheDir", "none",
                "--json", str(path)])
    r = json.loads(path.read_text())["results"]["fp32"]
    compute = BATCH / STEP_S                    # 2 clips/s: a batch in memory per step
    train = BATCH / (STEP_S + BATCH * CLIP_S)   # 1.6 clips/s: each step also decodes its batch
    data_rate = 1 / CLIP_S                      # 8 clips/s
    infer = BATCH / INFER_S                     # 12 clips/s
    assert r["compute_clips_per_s"] == pytest.approx(compute)
    assert r["train_clips_per_s"] == pytest.approx(train)
    assert r["data_clips_per_s"] == pytest.approx(data_rate)
    assert r["infer_clips_per_s"] == pytest.approx(infer)
    assert r["step_s"] == pytest.approx(STEP_S)
    assert r["train_images_per_s"] == pytest.approx(1.6 * SEQ_LEN)
    assert r["ratio_train_to_compute"] == pytest.approx(0.8)
    assert r["ratio_data_to_compute"] == pytest.approx(4.0)
    assert r["samples"] == {"compute": pytest.approx([compute] * 2), "train": pytest.approx([train] * 2),
                            "infer": pytest.approx([infer] * 2)}
    assert r["limit_images_per_s"] is None and r["ratio_train_to_limit"] is None

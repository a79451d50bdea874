"""Training and data-pipeline speed of one experiment stage, measured in one process.

    python bench.py --model ms_op --stage 2 --seqLen 16 --batchSize 8 --frameSize 224 --steps 5 \\
        --precision fp32 bf16 --json bench.json

It builds the stage exactly as the training scripts do (utils/experiment.py: Experiment,
datasets with the frame cache, loaders, model on device and memory format, trainable
parameters, optimiser) and times, after warm-up:
  compute  utils.train.train_step on one batch already in memory: the model's limit;
  data     the training DataLoader alone (same workers, frame cache, pinning), cache filled;
  train    utils.train.train_step fed by that DataLoader: what an epoch really runs at;
  infer    the evaluation forward (no grad, heads off) on a batch in memory;
  limit    (--limit) a plain torchvision ResNet-34 training step (every layer forward and
           backward, SGD) on batchSize x seqLen random images in memory, channels_last, same
           precision: what the hardware does with this backbone, in images/s.
  flops    (--flops) the arithmetic of one compute step (torch.utils.flop_counter: convolutions
           and matrix products, forward and backward), the GFLOP/s compute reaches, and the
           GFLOP/s of one large 3x3 convolution (512 -> 512 channels on 7x7 maps, batch 128,
           channels_last: the layer4 / ConvLSTM shape) on this machine, the rate the step's
           convolutions could reach at best; with --compareOriginal the same for the original's
           step, and the ratio to the original that this rate would allow with the same arithmetic.
Rates are clips per second, except *_images_per_s (clips x seqLen); ratio_train_to_compute =
train / compute, ratio_train_to_limit = train images/s / limit images/s. Peak memory: the
main process's maximum RSS (getrusage; DataLoader workers not included) and, on CUDA, the
maximum allocated memory. Weights are random (--pretrained none) with BatchNorm statistics
estimated as the scripts do; speed does not depend on them once subnormals are flushed
(torch.set_flush_denormal(True), always on here as in the scripts).

Without --datasetDir the synthetic dataset (python -m datasets.prepare.synthetic, default options)
is generated once into data/bench_synthetic.
"""
import json
import os
import platform
import shutil
import resource
import subprocess
import sys
import tempfile
import time
import warnings

import torch

import utils.experiment as experiment_module
from utils.arguments import base_parser, check_args, default_workers
from utils.experiment import (Experiment, build_stage_model, configure_backends, prepare_model, resolve_cache_dir,
                              stage_datasets, stage_loaders)
from utils.cli import Parser
from utils.data import set_epoch, to_device
from utils.device import PRECISIONS, pick_device, pick_precision
from utils.errors import UserError, run_cli
from utils.train import autocast, train_step
from tools.bench_original import original_stage2_seconds
from tools.verify_original import check_source

ROOT = os.path.dirname(os.path.abspath(__file__))
SYNTHETIC_DIR = os.path.join(ROOT, "data", "bench_synthetic")
MODELS = {"rgb": ("rgb", []), "convlstm": ("rgb", ["--noAttention"]), "flow": ("flow", []),
          "ms": ("ms", []), "ms_op": ("ms_op", [])}


def parse_args(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--model", choices=sorted(MODELS), default="ms_op", help="the experiment whose stage is timed")
    p.add_argument("--stage", type=int, choices=(1, 2), default=2, help="flow has stage 1 only")
    p.add_argument("--seqLen", type=int, default=16, help="frames per clip")
    p.add_argument("--batchSize", type=int, default=8, help="clips per training batch")
    p.add_argument("--frameSize", type=int, default=224, help="side of the square crop")
    p.add_argument("--memSize", type=int, default=512, help="ConvLSTM memory channels")
    p.add_argument("--steps", type=int, default=10, help="timed steps (batches) per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    p.add_argument("--repeats", type=int, default=1,
                   help="measure compute, train and infer this many times, interleaved, and keep the best "
                        "of each (shared machines: other processes only ever slow a measurement down)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when a GPU is visible, else cpu")
    p.add_argument("--precision", choices=PRECISIONS, nargs="+", default=["fp32", "bf16"],
                   help="the precisions to time, one after the other; auto: the scripts' choice for this hardware")
    p.add_argument("--numWorkers", type=int, default=default_workers(),
                   help="DataLoader workers (default: the scripts', one per core up to 8)")
    p.add_argument("--cpuTransforms", action="store_true",
                   help="GPU runs: transform the RGB frames with PIL in the workers, as the scripts' --cpuTransforms")
    p.add_argument("--dataOnDevice", choices=("auto", "on", "off"), default="auto",
                   help="training set held on the device, as in the scripts (utils/on_device.py)")
    p.add_argument("--limit", action="store_true",
                   help="also time a plain ResNet-34 training step on as many images (the hardware limit)")
    p.add_argument("--cacheDir", default="auto", help="frame cache, as in the scripts (auto | none | DIR)")
    p.add_argument("--datasetDir", default=None, help=f"dataset to read the batches from (default: synthetic data in {SYNTHETIC_DIR})")
    p.add_argument("--opInput", choices=("flat", "pooled"), default="flat", help="ms_op: the OP head's input")
    p.add_argument("--compareOriginal", dest="compareOriginal", default=None, metavar="DIR",
                   help="stage 2 of rgb or ms_op: also time the original Ego-RNN stage 2 (main-run-rgb.py of a "
                        "checkout of https://github.com/swathikirans/ego-rnn in DIR) on the same batch, interleaved "
                        "with ours, and print the ratio")
    p.add_argument("--niceToo", action="store_true",
                   help="CPU: also time train with DataLoader workers at the main process's priority (the scripts "
                        "lower it), interleaved, for the gain (train_nice0_clips_per_s)")
    p.add_argument("--computeOnly", action="store_true",
                   help="time compute only (and what --compareOriginal adds), not train and infer")
    p.add_argument("--flops", action="store_true",
                   help="count the FLOP of one compute step (and of the original's with --compareOriginal), print "
                        "the GFLOP/s reached and this machine's rate for a large 3x3 convolution")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="also profile this many compute steps (torch.profiler) and print the top ops by self CPU time")
    p.add_argument("--json", default=None, help="write the results here")
    a = p.parse_args(argv)
    if a.model == "flow" and a.stage != 1:
        p.error("the flow model has one stage: use --stage 1")
    if a.compareOriginal and not (a.model in ("rgb", "ms_op") and a.stage == 2):
        p.error("--compareOriginal times the original Ego-RNN stage 2: use it with --model rgb or ms_op, --stage 2")
    if a.compareOriginal:
        try:
            check_source(a.compareOriginal)
        except UserError as e:
            p.error(str(e).replace("--egornnSrc", "--compareOriginal"))
    if a.compareOriginal and a.frameSize != 224:
        p.error("--compareOriginal: the original Ego-RNN model takes 224 px frames (its 7x7 pooling): use --frameSize 224")
    if a.compareOriginal and len(a.precision) > 1:
        p.error("--compareOriginal: choose one --precision (auto, fp32 or bf16); the original runs fp32")
    for name in ("seqLen", "batchSize", "frameSize", "memSize", "steps", "repeats"):
        if getattr(a, name) <= 0:
            p.error(f"--{name} must be positive")
    return a


def ensure_synthetic(path=SYNTHETIC_DIR):
    subprocess.run([sys.executable, "-m", "datasets.prepare.synthetic", "--outDir", path, "--ifMissing"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return path


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forever(loader):
    """Batches of the loader, epoch after epoch (as fit() would see them)."""
    epoch = 0
    while True:
        epoch += 1
        set_epoch(loader, epoch)
        yield from loader


def rate(clips, seconds):
    return clips / seconds if seconds > 0 else float("nan")


def measure_data(loader, device, epochs=2):
    """Clips/s of the loader alone over whole epochs (each from a fresh epoch iterator, as fit()
    runs them, so the workers' start of epoch counts), best of `epochs`, after one epoch that
    fills the frame cache. With --dataOnDevice the batches are made by queued GPU kernels: the
    clock stops once they have run."""
    best = 0.0
    for epoch in range(epochs + 1):
        set_epoch(loader, epoch)
        t0, clips = time.perf_counter(), 0
        for batch in loader:
            clips += batch["label"].shape[0]
        sync(device)
        if epoch:
            best = max(best, rate(clips, time.perf_counter() - t0))
    return best


def measure_compute(exp, model, optimizer, batch, generator, steps, warmup):
    exp.set_train_mode(model)
    for _ in range(warmup):
        train_step(exp, model, batch, optimizer, generator=generator)
    sync(exp.device)
    t0 = time.perf_counter()
    for _ in range(steps):
        _, losses = train_step(exp, model, batch, optimizer, generator=generator)
    losses["loss"].item()
    sync(exp.device)
    return rate(steps * batch["label"].shape[0], time.perf_counter() - t0)


def measure_train(exp, model, optimizer, loader, generator, steps, warmup):
    exp.set_train_mode(model)
    it = forever(loader)
    for _ in range(warmup):
        train_step(exp, model, to_device(next(it), exp.device), optimizer, generator=generator)
    sync(exp.device)
    t0, clips = time.perf_counter(), 0
    for _ in range(steps):
        batch = to_device(next(it), exp.device)
        _, losses = train_step(exp, model, batch, optimizer, generator=generator)
        clips += batch["label"].shape[0]
    losses["loss"].item()
    sync(exp.device)
    return rate(clips, time.perf_counter() - t0)


def profile_table(exp, model, optimizer, batch, generator, steps, rows=15):
    """torch.profiler over `steps` training steps on the batch in memory: top ops by self CPU time."""
    from torch.profiler import ProfilerActivity, profile
    exp.set_train_mode(model)
    train_step(exp, model, batch, optimizer, generator=generator)  # warm-up outside the profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            train_step(exp, model, batch, optimizer, generator=generator)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


@torch.no_grad()
def measure_infer(exp, model, batch, steps, warmup):
    model.eval()
    for i in range(warmup + steps):
        if i == warmup:
            sync(exp.device)
            t0 = time.perf_counter()
        with autocast(exp.device, exp.precision):
            logits = exp.forward(model, batch, None, train=False)["logits"].float()
    logits.sum().item()
    sync(exp.device)
    return rate(steps * batch["label"].shape[0], time.perf_counter() - t0)


def measure_limit(device, precision, images, frame_size, steps, warmup):
    """Images/s of a plain ResNet-34 training step (all layers trained, SGD), channels_last."""
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet34().to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(images, 3, frame_size, frame_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (images,), device=device)
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        with autocast(device, precision):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    loss.item()
    sync(device)
    return rate(steps * images, time.perf_counter() - t0)


def step_flops(exp, model, optimizer, batch, generator):
    """FLOP of one training step on the batch in memory (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode
    exp.set_train_mode(model)
    with FlopCounterMode(display=False) as counter:
        train_step(exp, model, batch, optimizer, generator=generator)
    return counter.get_total_flops()


def original_step_flops(src, rgb, labels, num_classes, mem_size):
    """FLOP of one original Ego-RNN stage-2 step (its main_run, one epoch of one batch)."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    original_stage2_seconds(src, rgb, labels, num_classes=num_classes, mem_size=mem_size, steps=1, warmup=0,
                            around=counter)
    return counter.get_total_flops()


def conv_gflops(device, precision, repeats=5):
    """GFLOP/s of one 3x3 convolution, 512 -> 512 channels on 7x7 maps, batch 128, channels_last
    (the layer4 and ConvLSTM shape): the best this machine does with the step's main operation."""
    x = torch.randn(128, 512, 7, 7, device=device).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3, device=device).contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.no_grad(), autocast(device, precision):
        for i in range(repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, w, padding=1)
            sync(device)
            best = min(best, time.perf_counter() - t0) if i else best  # the first call warms up
    return 2 * 128 * 49 * 512 * 512 * 9 / best / 1e9


def machine_info():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name()
    return info


def load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def main(argv=None):
    a = parse_args(argv)
    torch.set_flush_denormal(True)  # as the scripts: subnormal ConvLSTM states slow CPU steps
    device = pick_device(a.device)
    configure_backends(device)
    dataset = a.datasetDir or ensure_synthetic()
    experiment, extra = MODELS[a.model]
    out_dir = tempfile.mkdtemp(prefix="bench-")
    script_argv = ["--datasetDir", dataset, "--outDir", out_dir, "--stage", str(a.stage),
                   "--seqLen", str(a.seqLen), "--trainBatchSize", str(a.batchSize),
                   "--valBatchSize", str(a.batchSize), "--frameSize", str(a.frameSize),
                   "--memSize", str(a.memSize), "--numWorkers", str(a.numWorkers),
                   "--cacheDir", a.cacheDir, "--pretrained", "none", *extra,
                   *(["--opInput", a.opInput] if experiment == "ms_op" else []),
                   *(["--cpuTransforms"] if a.cpuTransforms else []), "--dataOnDevice", a.dataOnDevice]
    args = base_parser(experiment, "bench").parse_args(script_argv)
    check_args(experiment, args)
    args.cacheDir = resolve_cache_dir(args)
    precisions = list(dict.fromkeys(pick_precision(p, device) for p in a.precision))
    load_before = load()
    print(f"bench: {a.model} stage {a.stage}, seqLen {a.seqLen}, batch {a.batchSize}, frame {a.frameSize}, "
          f"mem {a.memSize}, device {device}, {torch.get_num_threads()} threads, {a.numWorkers} workers, "
          f"cache {args.cacheDir}, load {load_before}", flush=True)

    exp0 = Experiment(experiment, args, a.stage, device=device, precision=precisions[0])
    train_set, test_set = stage_datasets(exp0)
    train_loader, _ = stage_loaders(exp0, train_set, test_set)
    if a.niceToo:  # the same loader with workers at the main process's priority
        niced, experiment_module.CPU_WORKER_NICE = experiment_module.CPU_WORKER_NICE, 0
        train_loader_nice0, _ = stage_loaders(exp0, train_set, test_set)
        experiment_module.CPU_WORKER_NICE = niced
    data = measure_data(train_loader, device)
    depth = a.numWorkers * 2  # batches the DataLoader holds ready (prefetch_factor 2 per worker)
    if a.steps < 2 * depth:
        print(f"note: --steps {a.steps} is short next to the {depth} batches the loader prefetches: "
              f"train_clips_per_s may not show a data pipeline that cannot keep up", flush=True)
    print(f"data pipeline: {data:.2f} clips/s ({len(train_set)} training clips)", flush=True)
    batch_cpu = next(iter(train_loader))

    results = {}
    for precision in precisions:
        torch.manual_seed(0)
        exp = Experiment(experiment, args, a.stage, device=device, precision=precision,
                         num_classes=train_set.num_classes, classes=train_set.classes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random weights: bench.py times, it does not learn
            model = prepare_model(exp, build_stage_model(exp, train_set, from_scratch=True,
                                                         calibration_clips=exp.args.trainBatchSize))
        optimizer = exp.make_optimizer(model)
        generator = torch.Generator().manual_seed(0)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batch = to_device(dict(batch_cpu), device)  # transformed and normalised as in training
        samples = {"compute": [], "train": [], "infer": []}
        if a.compareOriginal:
            print("samples, clips/s: compute and train interleaved with the original Ego-RNN stage 2 "
                  "(original) and our compute right after it (ours_next_to_original)", flush=True)
        for _ in range(a.repeats):
            samples["compute"].append(measure_compute(exp, model, optimizer, batch, generator=generator, steps=a.steps,
                                                     warmup=a.warmup))
            if a.compareOriginal:
                seconds = original_stage2_seconds(a.compareOriginal, batch["rgb"], batch["label"],
                                                  num_classes=train_set.num_classes, mem_size=a.memSize,
                                                  steps=a.steps, warmup=a.warmup)
                samples.setdefault("original", []).append(rate(a.steps * a.batchSize, sum(seconds)))
                samples.setdefault("ours_next_to_original", []).append(
                    measure_compute(exp, model, optimizer, batch, generator=generator, steps=a.steps, warmup=0))  # warm already
            if not a.computeOnly:
                samples["train"].append(measure_train(exp, model, optimizer, train_loader, generator=generator,
                                                      steps=a.steps, warmup=a.warmup))
                samples["infer"].append(measure_infer(exp, model, batch, steps=a.steps, warmup=a.warmup))
                if a.niceToo:
                    samples.setdefault("train_nice0", []).append(
                        measure_train(exp, model, optimizer, train_loader_nice0, generator=generator, steps=a.steps,
                                      warmup=a.warmup))
            print(f"repeat {len(samples['compute'])}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in samples.items()
                                                                  if v), flush=True)
        compute, train, infer = (max(samples[k], default=float("nan")) for k in ("compute", "train", "infer"))
        if a.profile:
            print(profile_table(exp, model, optimizer, batch, generator=generator, steps=a.profile), flush=True)
        flops = {}
        if a.flops:
            flops["flops_per_step"] = step_flops(exp, model, optimizer, batch, generator=generator)
            flops["gflops_per_s"] = flops["flops_per_step"] * compute / a.batchSize / 1e9
            flops["conv_gflops_per_s"] = conv_gflops(device, precision)
            text = (f"{precision}: FLOP per step (convolutions and matrix products) {flops['flops_per_step'] / 1e12:.3f} "
                    f"T, at compute {flops['gflops_per_s']:.0f} GFLOP/s; this machine's 3x3 convolution (512 ch, 7x7, "
                    f"batch 128) {flops['conv_gflops_per_s']:.0f} GFLOP/s")
            if a.compareOriginal:
                flops["original_flops_per_step"] = original_step_flops(
                    a.compareOriginal, batch["rgb"], batch["label"], num_classes=train_set.num_classes, mem_size=a.memSize)
                flops["original_gflops_per_s"] = (flops["original_flops_per_step"] * max(samples["original"])
                                                  / a.batchSize / 1e9)
                flops["ratio_allowed_at_conv_rate"] = (flops["conv_gflops_per_s"] * flops["original_flops_per_step"]
                                                       / flops["flops_per_step"] / flops["original_gflops_per_s"])
                text += (f"; the original's step {flops['original_flops_per_step'] / 1e12:.3f} T at "
                         f"{flops['original_gflops_per_s']:.0f} GFLOP/s: with this arithmetic, a step running entirely "
                         f"at the convolution's rate would be {flops['ratio_allowed_at_conv_rate']:.2f}x the original")
            print(text, flush=True)
        limit = (measure_limit(device, precision, images=a.batchSize * a.seqLen, frame_size=a.frameSize,
                               steps=a.steps, warmup=a.warmup)
                 if a.limit else None)
        r = {"compute_clips_per_s": compute,
             "data_clips_per_s": data, "train_clips_per_s": train,
             "train_nice0_clips_per_s": max(samples["train_nice0"]) if "train_nice0" in samples else None,
             "infer_clips_per_s": infer, "ratio_train_to_compute": train / compute,
             "train_images_per_s": train * a.seqLen, "limit_images_per_s": limit,
             "ratio_train_to_limit": train * a.seqLen / limit if limit else None,
             "ratio_data_to_compute": data / compute, "step_s": a.batchSize / compute,
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "cuda_max_allocated_mb": (torch.cuda.max_memory_allocated(device) / 2**20
                                       if device.type == "cuda" else None),
             "channels_last": next(p for p in model.parameters() if p.dim() == 4).is_contiguous(
                 memory_format=torch.channels_last),
             "samples": samples} | flops
        if a.compareOriginal:
            pairs = list(zip(samples["ours_next_to_original"], samples["original"]))
            r["original_clips_per_s"] = max(samples["original"])
            r["ratio_to_original"] = [o / g for o, g in pairs]
            print(f"{precision}: ours / original Ego-RNN stage 2, side by side: "
                  + ", ".join(f"{o:.3f} / {g:.3f} = {o / g:.2f}x" for o, g in pairs), flush=True)
        results[precision] = r
        print(f"{precision}: compute {compute:.2f}, train {train:.2f}, infer {infer:.2f} clips/s"
              + (f"; ResNet-34 limit {limit:.0f} images/s" if limit else ""), flush=True)
        del model, optimizer

    report = {"config": {k: v for k, v in vars(a).items() if k != "json"} | {"datasetDir": dataset,
                                                                             "cacheDir": args.cacheDir,
                                                                             "device": str(device)},
              "machine": machine_info() | {"load_before": load_before, "load_after": load()},
              "results": results}
    shutil.rmtree(out_dir, ignore_errors=True)
    print_table(report)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
        print(f"wrote {a.json}")
    return report


COLUMNS = [("compute", "compute_clips_per_s", "{:.2f}"),
           ("data", "data_clips_per_s", "{:.1f}"), ("train", "train_clips_per_s", "{:.2f}"),
           ("train nice0", "train_nice0_clips_per_s", "{:.2f}"), ("infer", "infer_clips_per_s", "{:.2f}"),
           ("train/compute", "ratio_train_to_compute", "{:.3f}"), ("data/compute", "ratio_data_to_compute", "{:.1f}"),
           ("step s", "step_s", "{:.3f}"), ("train img/s", "train_images_per_s", "{:.0f}"),
           ("limit img/s", "limit_images_per_s", "{:.0f}"), ("train/limit", "ratio_train_to_limit", "{:.2f}"),
           ("peak RSS MB", "peak_rss_mb", "{:.0f}"),
           ("CUDA MB", "cuda_max_allocated_mb", "{:.0f}")]


def print_table(report):
    c, m = report["config"], report["machine"]
    print(f"\n{c['model']} stage {c['stage']}, seqLen {c['seqLen']}, batch {c['batchSize']}, "
          f"{c['frameSize']} px, mem {c['memSize']}, {c['device']} ({m.get('cuda_device', m['cpu'])}, "
          f"{m['torch_threads']} threads), load {m['load_before']} -> {m['load_after']}; rates in clips/s")
    header = ["precision"] + [name for name, _, _ in COLUMNS]
    rows = [[p] + ["-" if r[k] is None else fmt.format(r[k]) for _, k, fmt in COLUMNS]
            for p, r in report["results"].items()]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in [header] + rows:
        print("  ".join(x.rjust(w) for x, w in zip(row, widths)))


def cli(argv):
    main(argv)  # the report is for callers (tests, scripts); the command has printed it


if __name__ == "__main__":
    run_cli(cli, sys.argv[1:])

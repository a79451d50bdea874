#!/usr/bin/env bash
# The GPU speed check of docs/speed.md, in one go (a few minutes on one GPU):
#   bash tools/bench_gpu.sh [OUTDIR]            (default experiments/bench_gpu)
# For each configuration, bench.py on CUDA (bf16, channels_last, cudnn.benchmark, uint8 clips
# normalised on the GPU) with --limit: the plain ResNet-34 training step on as many images, the
# hardware limit that train images/s is compared with. One JSON and one log per configuration,
# then one table of all of them. PYTHON picks the interpreter (default: python3).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-experiments/bench_gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, torchvision, os; print('torch', torch.__version__, 'torchvision', torchvision.__version__, \
'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'cpus', os.cpu_count())" | tee -a "$out/gpu.txt"
start=$(date +%s)
"$py" -m datasets.prepare.synthetic --outDir data/bench_synthetic --ifMissing || exit 1
echo "synthetic dataset ready after $(( $(date +%s) - start )) s"

# A 5x larger training set (15 videos per class and user, about the clips per epoch of a
# GTEA-61 split): with 70 clips an epoch is 3 batches of 32 and every epoch restarts the
# workers' prefetch.
"$py" -m datasets.prepare.synthetic --outDir data/bench_synthetic_large --instances 15 --ifMissing >/dev/null || exit 1

# model stage batch precision dataset [extra]: ms_op stage 2 is the target; ms (no OP head) and
# rgb stage 2 give the OP head's cost and the stage-1 / stage-2 step ratio on this GPU; batch
# 32 is the paper's; then the larger set, PIL transforms in the workers, and the DataLoader
# instead of the training set held on the GPU (--dataOnDevice auto holds it there by default).
configs=("ms_op 2 8 bf16 small" "ms 2 8 bf16 small" "rgb 1 8 bf16 small" "rgb 2 8 bf16 small"
         "ms_op 2 32 bf16 small" "rgb 1 32 bf16 small" "ms_op 2 32 bf16 large" "ms_op 2 8 bf16 small --cpuTransforms"
         "ms_op 2 32 bf16 small --dataOnDevice=off")
for cfg in "${configs[@]}"; do
    set -- $cfg
    suffix=""
    case "${6:-}" in --cpuTransforms) suffix=_pil ;; --dataOnDevice=off) suffix=_loader ;; esac
    name="bench_$1_s$2_b$3_$5$suffix"
    data=data/bench_synthetic; [ "$5" = large ] && data=data/bench_synthetic_large
    echo "== $name ($(( $(date +%s) - start )) s)"
    "$py" bench.py --device cuda --model "$1" --stage "$2" --batchSize "$3" --precision "$4" --seqLen 16 \
        --frameSize 224 --steps 40 --warmup 5 --repeats 2 --limit --datasetDir "$data" ${6:-} --json "$out/$name.json" \
        >"$out/$name.log" 2>&1 || echo "FAILED: $name (see $out/$name.log)"
    tail -n 4 "$out/$name.log"
done

"$py" - "$out" <<'EOF'
import glob, json, os, sys
print(f"\n{'config':<22}{'prec':>5}{'compute':>9}{'data':>8}{'train':>8}{'tr/comp':>8}{'train img/s':>12}"
      f"{'limit img/s':>12}{'tr/limit':>9}{'CUDA MB':>9}  (clips/s unless marked)")
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*.json"))):
    r = json.load(open(path))
    for prec, x in r["results"].items():
        print(f"{os.path.basename(path)[6:-5]:<22}{prec:>5}{x['compute_clips_per_s']:>9.1f}{x['data_clips_per_s']:>8.1f}"
              f"{x['train_clips_per_s']:>8.1f}{x['ratio_train_to_compute']:>8.2f}{x['train_images_per_s']:>12.0f}"
              f"{x['limit_images_per_s'] or 0:>12.0f}{x['ratio_train_to_limit'] or 0:>9.2f}{x['cuda_max_allocated_mb'] or 0:>9.0f}")
EOF

echo "== CUDA path checks ($(( $(date +%s) - start )) s)"
# On the GPU: uint8 flow clips normalised there equal the CPU DataLoader's bit for bit; RGB
# frames resized/cropped/flipped there are within a few levels of PIL's.
"$py" - <<'EOF2'
import torch
from datasets import GTEA61
from datasets.transforms import IMAGENET_STD
from utils.data import SeededDataset, collate
from utils.train import to_device
ds = GTEA61("data/bench_synthetic", ["S1"], "twostream", True, seqLen=16, frameSize=224)
keys = [(i, i + 7) for i in range(8)]
ref = collate([SeededDataset(ds)[k] for k in keys])
gpu = to_device(collate([SeededDataset(ds, normalize=False, source=True)[k] for k in keys]), torch.device("cuda"))
flow = (gpu["flow"].cpu() - ref["flow"]).abs().max().item()
levels = ((gpu["rgb"].cpu() - ref["rgb"]) * torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255).abs()
print(f"8 two-stream clips on the GPU vs the CPU DataLoader: flow max abs difference {flow}; RGB pixels "
      f"max {levels.max().item():.2f} levels apart, {100 * (levels > 0.5).float().mean().item():.2f}% differ")
EOF2
# The training set held on the GPU (utils/on_device.py) gives the GPU DataLoader path's batches.
"$py" - <<'EOF3'
import torch
from datasets import GTEA61
from utils.data import make_loader, set_epoch
from utils.on_device import DeviceLoader
from utils.train import to_device
cuda = torch.device("cuda")
ds = GTEA61("data/bench_synthetic", ["S1", "S3", "S4"], "rgb_mmaps", True, seqLen=16, frameSize=224)
loaders = [make_loader(ds, 32, True, 0, 4, True, False, True), DeviceLoader(ds, 32, 0, cuda)]
same = True
for epoch in (0, 1):
    batches = []
    for loader in loaders:
        set_epoch(loader, epoch)
        batches.append([to_device(dict(b), cuda) for b in loader])
    same &= all(torch.equal(a[k].cpu(), b[k].cpu()) for a, b in zip(*batches) for k in a)
print(f"--dataOnDevice: 2 epochs of batches on the GPU equal the DataLoader's: {same}")
EOF3
# The SAMSOP-Net script end to end on CUDA (stage 1 + 2, CAM figures), then evaluate.py.
run=/tmp/gpu_ms_op
rm -rf "$run"
"$py" main_ms_op.py --datasetDir data/bench_synthetic --outDir "$run" --numEpochs 2 --pretrained none \
    --seqLen 8 --frameSize 112 --memSize 128 --trainBatchSize 8 --camVideos 1 >"$out/main_ms_op.log" 2>&1 \
    && tail -n 3 "$out/main_ms_op.log" || { echo "FAILED: main_ms_op.py"; tail -n 20 "$out/main_ms_op.log"; }
"$py" evaluate.py --model ms_op --modelStateDict "$run/stage2/best_model.pth" --datasetDir data/bench_synthetic --outDir "$run/eval" --memSize 128 \
    >"$out/evaluate.log" 2>&1 && tail -n 2 "$out/evaluate.log" || { echo "FAILED: evaluate.py"; tail -n 20 "$out/evaluate.log"; }
echo "total $(( $(date +%s) - start )) s"

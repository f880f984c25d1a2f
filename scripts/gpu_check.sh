#!/usr/bin/env bash
# One command that measures what the README's GPU rows report, in under 8 minutes on one GPU:
#
#   bash scripts/gpu_check.sh --data data/ISIC2017 --eval-data data/fullres-sample
#   bash scripts/gpu_check.sh --smoke        # tiny sizes on the CPU, in a minute (tested in CI)
#
# 1. the machine: GPU, driver, PyTorch, CUDA;
# 2. scripts/benchmark.py on CUDA: fp32, bf16, fp16, each with and without channels_last, and
#    bf16 + channels_last + torch.compile, with an ONNX Runtime inference row (the paper's
#    31 M-parameter U-Net at 256x256, batch 16);
# 3. a few minutes of `train.py --preset isic2018-gpu` on --data (which needs an official
#    validation folder, as the ISIC 2017 layout has), with images/s and GPU memory per epoch;
# 4. predict.py and scripts/evaluate.py with that checkpoint on --eval-data (full-resolution
#    images with masks, in any layout the reader knows), with images/s and the scores.
#
# Everything goes to stdout and under --output (default results/gpu_check).
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
data=data/ISIC2017
eval_data=""
minutes=3
output=results/gpu_check
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) smoke=1 ;;
        --data) data="$2"; shift ;;
        --eval-data) eval_data="$2"; shift ;;
        --minutes) minutes="$2"; shift ;;
        --output) output="$2"; shift ;;
        -h|--help)
            echo "usage: bash scripts/gpu_check.sh [--smoke] [--data DIR] [--eval-data DIR]" \
                 "[--minutes N] [--output DIR]"
            sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
python=${PYTHON:-python}

if [ "$smoke" = 1 ]; then
    # The same steps on the CPU, at sizes that take seconds: proves the script works.
    data=synthetic
    device=(--device cpu)
    bench=(--base-channels 4 --depth 2 --img-size 32 --batch-size 2 --seconds 0.2
           --min-steps 1 --warmup 1)
    train=(--img-size 32 --base-channels 4 --depth 2 --batch-size 4 --epochs 1
           --workers 0 --no-compile)
else
    device=(--device cuda)
    bench=(--base-channels 64 --img-size 256 --batch-size 16 --seconds 5 --min-steps 3)
    train=(--max-minutes "$minutes" --workers 8)
fi
mkdir -p "$output"

section() { printf '\n== %s\n' "$1"; }

section "machine"
"$python" - <<'EOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
else:
    print("no GPU: CPU only")
EOF
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
fi

section "benchmark (scripts/benchmark.py)"
"$python" scripts/benchmark.py "${device[@]}" "${bench[@]}" --onnx --json "$output/benchmark.json"

section "training (train.py --preset isic2018-gpu, --data $data)"
rm -rf "$output/train"
"$python" train.py --preset isic2018-gpu --data "$data" "${device[@]}" "${train[@]}" \
    --checkpoint-dir "$output/train"
"$python" - "$output/train/metrics.jsonl" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for row in rows:
    memory = f", GPU memory {row['gpu_memory_mib'] / 1024:.1f} GiB" if "gpu_memory_mib" in row else ""
    print(f"epoch {row['epoch']}: {row['images_per_second']:.1f} training images/s{memory}, "
          f"val Dice {row['val_dice']:.4f}")
EOF

if [ -z "$eval_data" ]; then
    eval_data="$data"
fi
section "prediction (predict.py) and evaluation (scripts/evaluate.py) on $eval_data"
model="$output/train/best.pt"
"$python" - "$eval_data" "$output/images.txt" <<'EOF'
import sys
from data.layouts import find_split_folders
from data.splits import data_root
root = data_root(sys.argv[1])
folders = find_split_folders(root)
split = next(name for name in ("val", "test", "train") if name in folders)
open(sys.argv[2], "w").write(str(folders[split][0]))
EOF
rm -rf "$output/masks"
"$python" predict.py --checkpoint "$model" --input "$(cat "$output/images.txt")" \
    --output "$output/masks" "${device[@]}"
"$python" scripts/evaluate.py --checkpoint "$model" --data "$eval_data" "${device[@]}" \
    --output "$output/evaluation"
section "done: results in $output"

#!/usr/bin/env bash
# GPU checks and measurements, run on a CUDA machine from the repository root:
#   bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the tests that need CUDA (skipped on CPU-only machines);
# 2. the speed benchmark on the GPU (fp32; then bf16 autocast + channels_last for the backbone);
# 3. the AUROC change from bf16 autocast: the demo categories trained and tested twice.
# Everything lands in OUT_DIR (default benchmarks/results/gpu), at most 8 files.
set -uo pipefail
OUT_DIR=${1:-benchmarks/results/gpu}
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1
LOG="$OUT_DIR/gpu_check.log"

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"

  echo "=== 1. CUDA tests"
  python -m pytest -q -rs -p no:cacheprovider \
    tests/metrics/test_metrics.py tests/inference/test_api.py tests/core/test_knn_scoring.py \
    tests/core/test_cuda_graph.py tests/test_configs.py -k "cuda or gpu or trainer or knn or search or graph"

  echo "=== 2a. speed, fp32"
  python benchmarks/speed.py --device cuda --train-images 200 --sweep 50,100,200,400 \
    --test-images 100 --batch 16 --cuda-graph --out "$OUT_DIR/speed_cuda.json"

  echo "=== 2b. speed, backbone in bf16 autocast + channels_last"
  python benchmarks/speed.py --device cuda --train-images 200 --test-images 100 --batch 16 \
    --variants fapm --skip-rss --cuda-graph --model-overrides backbone.autocast_dtype=bfloat16,backbone.channels_last=true \
    --out "$OUT_DIR/speed_cuda_bf16.json"

  echo "=== 3. AUROC with and without bf16 autocast (demo, random wide_resnet50_2, seed 0, max image score)"
  for dtype in null bfloat16; do
    python train.py -m experiment=demo_all trainer=gpu backbone.pretrained=false save_model=false \
      model.image_score=max backbone.autocast_dtype=$dtype hydra.sweep.dir="/tmp/autocast_$dtype"
    python report.py "/tmp/autocast_$dtype" --out "/tmp/autocast_${dtype}_report"
  done
} 2>&1 | tee "$LOG"

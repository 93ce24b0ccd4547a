#!/usr/bin/env bash
# On the GPU machine, from the repository root, with the bundle of prepare.sh beside it:
#
#   bash scripts/gpu_bench/run.sh [BUNDLE] [OUT] [benchmarks|quick|goha|fit|genhead]
#
# benchmarks (default; about 7 minutes on one H100 after the machine starts): GOHA against the official Model
# (float32, batches 1-4, the super-resolution over the batch and one frame a call, the per-stage breakdown at
# batch 2 with the memory each stage adds; again with cuDNN's engines chosen under 2.1 GiB), GOHA's per-stage
# CUDA kernels at batch 1 (profile_goha.py), the layers that set its peak memory at batches 1-8 (memory_goha.py:
# allocator against live tensors, the difference being cuDNN workspaces; again under the cap), the GPU tests of
# GOHA / GPHM / the Gaussian rasteriser, GPHM render speed of the template avatar (every mode, batches 1/8/16) and
# its top CUDA kernels at batch 8.
# goha (about 4.5 minutes): the GOHA memory probes and the two GOHA bench runs against the official, GOHA's GPU tests.
# fit (about 9 minutes on a fresh machine, gsplat's build included): the 5-minute GPHM monocular fit of talk1 with
# the held-out pose diagnostic and the training-frame check (the fast-path render speed is the benchmarks mode's
# template row: the same work for the same number of Gaussians); FIT_OPTIONS="KEY=VALUE ..." (env) passes
# FitConfig overrides, e.g. FIT_OPTIONS="finetune_steps=2000" for the paper's fine-tuning length.
# genhead (a bundle made with PORTRAIT4D and PYTORCH3D): GenHead against the official generator with pytorch3d's
# own kernels, and ours stage by stage at batches 1 and 12 (scripts/bench_genhead.py --breakdown; the kernels
# compile first).
# Everything is written under OUT (default outputs/gpu_bench).
set -uo pipefail
bundle=${1:-.gpu_bench}
out=${2:-outputs/gpu_bench}
what=${3:-benchmarks}
mkdir -p "$out"
t0=$(date +%s)
stamp() { echo "[gpu_bench] $1 after $(( $(date +%s) - t0 )) s"; }
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-8}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_bench_site "$bundle"/whl/*.whl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_bench_goha "$bundle"/goha_whl/*.whl
# modules the benchmarks never call but that avatar imports at the top of some files (video / image IO)
stubs=/tmp/gpu_bench_stubs
for m in cv2 av; do
  python3 -c "import $m" 2>/dev/null || { mkdir -p "$stubs/$m"; : > "$stubs/$m/__init__.py"; }
done
export PYTHONPATH="$stubs:/tmp/gpu_bench_site:$PWD"
build_gsplat() {  # gsplat compiles its CUDA extension on first use (1-2 minutes)
  nice -n 19 python3 -c "import torch; from avatar.fitting.gphm_fit import _warm_up_rasterizer; \
_warm_up_rasterizer(torch.device('cuda')); print('gsplat built')"
}
if [ "$what" = fit ]; then
  build_gsplat
  fit_options=()
  for o in ${FIT_OPTIONS:-}; do fit_options+=(--fit-option "$o"); done
  python3 scripts/gphm_monocular_eval.py -q run --prepared-dir "$bundle/packed" --only talk1 --minutes 5 \
    --device cuda --out "$out/talk1" --work /tmp/gpu_bench_work --test-pose-steps 100 "${fit_options[@]}" 2>&1 | tail -30
  stamp fit
  exit 0
fi
if [ "$what" = genhead ]; then
  [ -f "$bundle/portrait4d_src.tar.gz" ] || { echo "no Portrait-4D source in $bundle (prepare.sh with PORTRAIT4D)"; exit 2; }
  mkdir -p /tmp/gpu_bench_p4d /tmp/gpu_bench_p3d
  tar -xzf "$bundle/portrait4d_src.tar.gz" -C /tmp/gpu_bench_p4d && tar -xzf "$bundle/pytorch3d_src.tar.gz" -C /tmp/gpu_bench_p3d
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/gpu_bench_genhead \
    "$bundle"/genhead_whl/*.whl
  python3 scripts/bench_genhead.py --official /tmp/gpu_bench_p4d --extra-path /tmp/gpu_bench_genhead \
    --pytorch3d-src /tmp/gpu_bench_p3d --device cuda --bf16 --breakdown --json "$out/genhead.json" 2>&1 | tee "$out/genhead.log"
  stamp end
  exit 0
fi
mkdir -p /tmp/gpu_bench_goha_src && tar -xf "$bundle/goha_src.tar" -C /tmp/gpu_bench_goha_src
cap=2.1  # GiB: under half of the official's batch-1 peak (4.33 GiB in run 4)
goha_memory() {  # BATCHES...: the layers that set GOHA's peak memory at each batch; then with cuDNN's engines
  # chosen under the cap, and with the super-resolution one frame a call under the cap
  local probe=scripts/gpu_bench/memory_goha.py log="$out/memory_goha.log"
  python3 $probe --batch-sizes "$@" > "$log" 2>&1
  python3 $probe --batch-sizes "$@" --top 6 --memory-cap-gib $cap >> "$log" 2>&1
  python3 $probe --batch-sizes "$@" --top 6 --memory-cap-gib $cap --sr-frames 1 >> "$log" 2>&1
  grep -E "^batch|does not fit|^GOHA" "$log"
}
goha_bench() {  # [EXTRA OPTIONS]: ours against the official Model, float32, batches 1-4, the SR over the batch and
  # one frame a call; then the same with cuDNN's engines chosen under the cap (another process: the engine choice
  # is cached per process)
  local common=(--device cuda --official /tmp/gpu_bench_goha_src --extra-path /tmp/gpu_bench_goha --frames 16
                --batch-sizes 1 2 3 4 --dtypes fp32 --fused ieee --sr-frames all 1)
  python3 -m avatar.bench goha "${common[@]}" --json "$out/goha.json" "$@" 2>&1 | tee "$out/goha.log"
  python3 -m avatar.bench goha "${common[@]}" --memory-cap-gib $cap --json "$out/goha_capped.json" 2>&1 \
    | tee "$out/goha_capped.log"
}
gpu_tests() {  # SECONDS TEST_FILES...: the tests marked gpu
  local limit=$1; shift
  timeout "$limit" python3 -m pytest -q -p no:cacheprovider -p no:timeout -m gpu "$@" 2>&1 | tail -15 \
    | tee "$out/gpu_tests.log"
}
gphm_bench() {
  python3 -m avatar.bench gphm --device cuda --batch-sizes 1 8 16 --json "$out/gphm.json" 2>&1 | tee "$out/gphm.log"
}
if [ "$what" = goha ]; then  # GOHA only (about 4.5 minutes): its memory by layer, speed and memory against the official
  goha_memory 1 2 4; stamp goha-memory
  goha_bench; stamp goha
  gpu_tests 60 tests/test_goha_model.py tests/test_fused_render.py; stamp end
  exit 0
fi
build_gsplat > "$out/gsplat_build.log" 2>&1 &
gs=$!
if [ "$what" = quick ]; then  # the benchmarks' main rows only (about 4 minutes): for a short device budget
  goha_memory 1 2 4 8; stamp goha-memory
  goha_bench; stamp goha
  wait $gs; tail -3 "$out/gsplat_build.log"
  gphm_bench; stamp gphm
  gpu_tests 90 tests/test_gphm_model.py tests/test_goha_model.py tests/test_fused_render.py tests/test_genhead.py
  stamp end
  exit 0
fi
goha_memory 1 2 4 8
stamp goha-memory
goha_bench --breakdown --breakdown-batch 2; stamp goha
wait $gs; tail -3 "$out/gsplat_build.log"
gpu_tests 150 tests/test_gphm_model.py tests/test_goha_model.py tests/test_gaussian_render.py \
  tests/test_flame_triton_search.py tests/test_goha_planes.py tests/test_genhead.py tests/test_fused_render.py
stamp tests
gphm_bench; stamp gphm
timeout 60 python3 scripts/gpu_bench/profile_goha.py 1 > "$out/profile_goha.log" 2>&1
stamp goha-profile
timeout 45 python3 scripts/gpu_bench/profile_gphm.py 8 --modes fast-bf16 > "$out/profile_gphm.log" 2>&1
stamp end

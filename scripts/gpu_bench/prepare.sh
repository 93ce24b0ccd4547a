#!/usr/bin/env bash
# Build the bundle that scripts/gpu_bench/run.sh needs on a GPU machine with no internet (the docs/goha and
# docs/gphm tables come from it). Run here, on a machine with PyPI, from the repository root:
#
#   bash scripts/gpu_bench/prepare.sh GOHA_CHECKOUT [BUNDLE] [PYTHON_VERSION]
#
# GOHA_CHECKOUT: an NVlabs/GOHA checkout (its source is archived into the bundle, never committed here).
# BUNDLE: output folder (default .gpu_bench, git-ignored); PYTHON_VERSION: the GPU machine's Python (default 3.12).
# The bundle holds: wheels for the GPU machine's Python (gsplat 1.5.3 and what it imports that a CUDA PyTorch
# image may lack; pytest for the GPU tests; GOHA's pinned transformers 4.36.2 / huggingface_hub 0.20.3 /
# tokenizers 0.15.2 / kornia 0.5.5, installed apart and put on the path of the official model only), the GOHA
# source as goha_src.tar, and the talk1 pack of ../shared/media for the GPHM fit (mediapipe runs here).
# With PORTRAIT4D=CHECKOUT (YuDeng/Portrait-4D) and PYTORCH3D=CHECKOUT (facebookresearch/pytorch3d) set, also
# what `run.sh ... genhead` needs: their sources (portrait4d/ and pytorch3d/ only, gzipped) and omegaconf.
set -euo pipefail
checkout=${1:?usage: prepare.sh GOHA_CHECKOUT [BUNDLE] [PYTHON_VERSION]}
bundle=${2:-.gpu_bench}
pyver=${3:-3.12}
python=${PYTHON:-.venv/bin/python}
[ -f "$checkout/src/models/model_s2.py" ] || { echo "$checkout is not an NVlabs/GOHA checkout (no src/models/model_s2.py)" >&2; exit 2; }
mkdir -p "$bundle/whl" "$bundle/goha_whl"
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$@"
}
download "$bundle/whl" gsplat==1.5.3 rich==13.9.4 markdown-it-py==3.0.0 mdurl==0.1.2 pytest==8.3.4 pluggy==1.5.0 \
  iniconfig==2.0.0
download "$bundle/goha_whl" transformers==4.36.2 huggingface_hub==0.20.3 tokenizers==0.15.2 kornia==0.5.5
tar -C "$checkout" --exclude=.git --exclude='figs' -cf "$bundle/goha_src.tar" .
if [ -n "${PORTRAIT4D:-}" ] && [ -n "${PYTORCH3D:-}" ]; then
  [ -d "$PORTRAIT4D/portrait4d/training" ] || { echo "$PORTRAIT4D is not a Portrait-4D checkout" >&2; exit 2; }
  [ -f "$PYTORCH3D/pytorch3d/csrc/knn/knn.h" ] || { echo "$PYTORCH3D is not a pytorch3d checkout" >&2; exit 2; }
  tar -C "$PORTRAIT4D" --exclude=.git -czf "$bundle/portrait4d_src.tar.gz" portrait4d
  tar -C "$PYTORCH3D" --exclude=.git -czf "$bundle/pytorch3d_src.tar.gz" pytorch3d
  mkdir -p "$bundle/genhead_whl"
  python3 -m pip wheel -q --no-deps -w "$bundle/genhead_whl" antlr4-python3-runtime==4.9.3 omegaconf==2.3.0
fi
if [ -f ../shared/media/videos/talk1.mp4 ]; then
  HF_HUB_OFFLINE=1 "$python" scripts/gphm_monocular_eval.py pack ../shared/media/videos/talk1.mp4 -o "$bundle/packed"
  rm -rf "$bundle/prepared"  # the unpacked preparation: the pack holds it (the bundle must stay small to travel)
fi
du -sh "$bundle"

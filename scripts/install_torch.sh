#!/usr/bin/env bash
# Install torch into the virtual environment whose Python is $1, choosing the build for this machine:
#   TORCH_PIP_ARGS set        torch==$TORCH_VERSION with those pip arguments (your choice wins)
#   an NVIDIA GPU             PyPI's default build (CUDA)
#   Linux without one         the CPU build (torch==X+cpu, ~200 MB instead of gigabytes of CUDA libraries):
#                             from PyTorch's CPU index when it answers, otherwise from the package
#                             registries pip already uses (a mirror or --find-links folder may hold it);
#                             failing both, PyPI's default build, with a warning
#   macOS and others          PyPI's default build (CPU there)
# An installed torch of the same version is kept. DRY_RUN=1 prints the pip command instead of running it.
set -euo pipefail

python=${1:?usage: scripts/install_torch.sh PATH/TO/venv/bin/python}
version=${TORCH_VERSION:-2.13.0}
cpu_index=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
nvidia_smi=${NVIDIA_SMI:-nvidia-smi}

pip_install() {  # pip_install REASON ARGS...: run (or, with DRY_RUN=1, print) one pip install
    local reason=$1
    shift
    echo "install_torch: $reason: pip install $*"
    if [ "${DRY_RUN:-0}" = 1 ]; then
        return 0
    fi
    "$python" -m pip install --quiet "$@"
}

if [ "${DRY_RUN:-0}" != 1 ] && "$python" - "$version" <<'EOF' 2>/dev/null; then
import sys
import torch
sys.exit(0 if torch.__version__.split("+")[0] == sys.argv[1] else 1)
EOF
    echo "install_torch: torch $version is installed already"
    exit 0
fi

if [ -n "${TORCH_PIP_ARGS:-}" ]; then
    # shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of pip arguments
    pip_install "TORCH_PIP_ARGS" "torch==$version" $TORCH_PIP_ARGS
elif "$nvidia_smi" -L >/dev/null 2>&1; then
    pip_install "an NVIDIA GPU: the CUDA build" "torch==$version"
elif [ "$(uname -s)" != Linux ]; then
    pip_install "$(uname -s): PyPI's build is the CPU one" "torch==$version"
elif "$python" - "$cpu_index" <<'EOF'; then
import sys
import urllib.request

try:
    urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=10).close()
except Exception:
    sys.exit(1)
EOF
    pip_install "no NVIDIA GPU: the CPU build from $cpu_index" "torch==$version+cpu" --extra-index-url "$cpu_index"
elif pip_install "no NVIDIA GPU, $cpu_index unreachable: the CPU build from the registries" "torch==$version+cpu"; then
    :
else
    echo "install_torch: WARNING: no CPU build of torch $version is reachable; installing PyPI's default" \
        "build (CUDA libraries, gigabytes). Set TORCH_PIP_ARGS to choose, e.g." \
        "TORCH_PIP_ARGS='--index-url https://download.pytorch.org/whl/cpu'" >&2
    pip_install "fallback" "torch==$version"
fi

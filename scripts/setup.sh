#!/usr/bin/env bash
# Set up a fresh machine: system packages (Icarus Verilog, Verilator, Fashion-MNIST), a virtual
# environment in .venv with the CPU build of PyTorch first, then prunefab and its dependencies.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v iverilog >/dev/null 2>&1 || need+=(iverilog)
command -v verilator >/dev/null 2>&1 || need+=(verilator)
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || need+=(dataset-fashion-mnist)
if [ ${#need[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq "${need[@]}"; } >/dev/null; then
        echo "setup: could not install the Debian package(s) ${need[*]}; install them with" \
             "'apt-get install ${need[*]}' and run this again" >&2
        exit 1
    fi
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# The CPU wheel first: the package's torch>=2.2 range is then already met and pulls nothing.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test,toolchain]'

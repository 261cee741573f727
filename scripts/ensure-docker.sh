#!/usr/bin/env bash
# Make sure a Docker engine answers. Idempotent: exits 0 at once when `docker info` works.
# Otherwise, as root with dockerd installed, starts dockerd detached (log in .state/, its pid in
# .state/dockerd.pid) and waits for it. The daemon runs with the CIS Docker Benchmark settings
# that need no host changes: --live-restore (containers keep running while it is stopped or
# restarted), --icc=false (no traffic between containers on the default bridge) and
# --no-new-privileges (the default for every container). A daemon that is already running is
# left as it is. It never installs anything: `make setup` does that.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
state="${root}/.state"
log="${state}/dockerd.log"
pid_file="${state}/dockerd.pid"
wait_s="${ENSURE_DOCKER_WAIT_S:-30}"

fail() {
    echo "ensure-docker: $*" >&2
    exit 1
}

command -v docker >/dev/null 2>&1 || fail "the docker CLI is not installed (run: make setup)"

if docker info >/dev/null 2>&1; then
    exit 0
fi

[[ "$(id -u)" -eq 0 ]] || fail "the Docker engine is not running and only root can start it here"
dockerd_bin="$(command -v dockerd 2>/dev/null)" || fail "dockerd is not installed (run: make setup)"

mkdir -p "${state}"
chmod 0700 "${state}"
touch "${log}"
chmod 0600 "${log}"

rm -f "${pid_file}"
echo "ensure-docker: starting dockerd (log: ${log})" >&2
setsid nohup "${dockerd_bin}" --live-restore --icc=false --no-new-privileges \
    >>"${log}" 2>&1 </dev/null &
pid=$!

for ((i = 0; i < wait_s * 2; i++)); do
    if docker info >/dev/null 2>&1; then
        (umask 077 && echo "${pid}" >"${pid_file}")
        echo "ensure-docker: dockerd is up (pid ${pid}, recorded in ${pid_file})" >&2
        exit 0
    fi
    if ! kill -0 "${pid}" 2>/dev/null; then
        fail "dockerd exited during start-up; last log line: $(tail -n 1 "${log}")"
    fi
    sleep 0.5
done
fail "dockerd did not answer within ${wait_s} s; last log line: $(tail -n 1 "${log}")"

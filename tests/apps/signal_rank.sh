#!/usr/bin/env bash
# A rank stopped (SIGSTOP) or killed (SIGKILL) mid-run must end the whole job by itself, within a
# bound, with a non-zero exit and a diagnostic — never a hang.
#   signal_rank.sh SIGNAL LIMIT_SECONDS READY_TEXT EXPECTED_TEXT MPIRUN ARGS...
# Starts the job, waits for READY_TEXT in its output (the watchdog covers a running job, not MPI's
# own start-up), signals its last rank, and waits at most LIMIT_SECONDS for the job to end. On
# failure the job is killed so the test itself never hangs.
set -u
signal=$1 limit=$2 ready=$3 expected=$4
shift 4
log=$(mktemp)
"$@" >"$log" 2>&1 &
job=$!
for _ in $(seq 1 600); do
  grep -q -- "$ready" "$log" && [ "$(pgrep -P "$job" | wc -l)" -ge 2 ] && break
  sleep 0.1
done
sleep 1  # iterations under way
victim=$(pgrep -P "$job" | tail -n 1)
if [ -z "$victim" ]; then
  echo "FAIL: no rank process found under mpirun ($job)"; cat "$log"; kill -9 "$job"; exit 1
fi
start=$(date +%s%N)
kill -s "$signal" "$victim"
ended=0
for _ in $(seq 1 $((limit * 10))); do
  if ! kill -0 "$job" 2>/dev/null; then ended=1; break; fi
  sleep 0.1
done
if [ "$ended" -ne 1 ]; then
  echo "FAIL: the job still runs ${limit} s after SIG${signal} to rank pid ${victim}: a hang"
  pkill -9 -P "$job"; kill -9 "$job"; cat "$log"; exit 1
fi
wait "$job"
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
if [ "$rc" -eq 0 ]; then echo "FAIL: exit 0 after SIG${signal}"; cat "$log"; exit 1; fi
if ! grep -q -- "$expected" "$log"; then
  echo "FAIL: no '$expected' in the job's output"; cat "$log"; exit 1
fi
grep -m1 -- "$expected" "$log"
echo "ok: SIG${signal} to one rank; the job ended ${elapsed_ms} ms later with exit ${rc}"

#!/usr/bin/env bash
# A fault of a whole host mid-training must end the job by itself within a bound, with a non-zero
# exit and a diagnostic naming that host, leave no rank running, and leave a checkpoint that
# resumes. Runs on host0 of a set made by netns_hosts.sh (it reads MOE_MH_NAMESPACES):
#   host_fault.sh kill|link LIMIT_SECONDS EXPECTED_REGEX MOE_TRAIN DIR
#   kill: every process of the last host is killed at once (SIGKILL), as when a node dies;
#   link: the last host's link is taken down (its processes live on, cut off), as when a cable or
#         switch port fails.
# The job is a 4-rank moe-train with the watchdog at 3 s, saving every 10 steps. After the fault
# the newest checkpoint in DIR must resume on the same hosts and run 5 more steps.
set -u
mode=$1 limit=$2 expected=$3 train=$4 dir=$5
read -r -a namespaces <<<"${MOE_MH_NAMESPACES:?run under netns_hosts.sh}"
victim_ns=${namespaces[-1]}
victim_host=host$((${#namespaces[@]} - 1))
common=(--batch 256 --eval-tokens 64 --baseline none --watchdog-seconds 3)

# Processes of moe-train still alive in any host's namespace.
ranks_left() {
  local ns pid
  for ns in "${namespaces[@]}"; do
    for pid in $(ip netns pids "$ns"); do
      [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = moe-train ] && echo "$pid"
    done
  done
}
fail() { echo "FAIL: $*"; cat "$log"; kill -9 "$job" $(ranks_left) 2>/dev/null; exit 1; }

rm -rf "$dir"
mkdir -p "$dir"
log=$dir/job.log
mpirun -np 4 "$train" --steps 1000000 --log-every 5 "${common[@]}" --save "$dir/ckpt" --save-every 10 \
  >"$log" 2>&1 &
job=$!
# Past two checkpoints (steps 10 and 20) with iterations under way; the watchdog covers a running
# job, not MPI's own start-up.
for _ in $(seq 1 1200); do
  grep -q "^step 25 " "$log" && break
  kill -0 "$job" 2>/dev/null || fail "the job ended before the fault"
  sleep 0.1
done
grep -q "^step 25 " "$log" || fail "the job did not reach step 25 in 120 s"

start=$(date +%s%N)
case $mode in
  kill) ip netns pids "$victim_ns" | xargs -r kill -9 ;;
  link) ip -n "$victim_ns" link set eth0 down ;;
  *) fail "unknown mode '$mode'" ;;
esac
ended=0
for _ in $(seq 1 $((limit * 10))); do
  if ! kill -0 "$job" 2>/dev/null; then ended=1; break; fi
  sleep 0.1
done
[ "$ended" -eq 1 ] || fail "the job still runs ${limit} s after the fault ($mode on $victim_host): a hang"
wait "$job"
rc=$?
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
[ "$rc" -ne 0 ] || fail "exit 0 after the fault"
grep -qE -- "$expected" "$log" || fail "no line matching '$expected' in the job's output"
echo "diagnostic lines:"
grep -E -- "$expected" "$log" | sort | uniq -c | sort -rn | head -n 8
# No rank may outlive the job on either side (a cut-off host's ranks end by their own watchdog).
for _ in $(seq 1 100); do
  [ -z "$(ranks_left)" ] && break
  sleep 0.1
done
left=$(ranks_left)
[ -z "$left" ] || fail "moe-train processes still running 10 s after the job ended: $left"
echo "ok: $mode on $victim_host; the job ended ${elapsed_ms} ms later with exit ${rc}, no rank left"

# The newest checkpoint continues on the same hosts (the link restored, the dead host's leftovers
# gone).
[ "$mode" = link ] && ip -n "$victim_ns" link set eth0 up
ip netns pids "$victim_ns" | xargs -r kill -9
newest=$(ls -d "$dir"/ckpt/step-* 2>/dev/null | sort | tail -n 1)
[ -n "$newest" ] || fail "no checkpoint in $dir/ckpt"
step=$((10#${newest##*step-}))
to=$((step + 5))
log=$dir/resume.log
timeout 120 mpirun -np 4 "$train" --steps "$to" --log-every 1 "${common[@]}" --resume "$dir/ckpt" \
  >"$log" 2>&1
rc=$?
[ "$rc" -eq 0 ] || { job=""; fail "the resume from $newest failed (exit $rc)"; }
grep -q "summary: 4 ranks (ep 4 x dp 1), steps $step\.\.$to " "$log" ||
  { job=""; fail "the resumed run did not run steps $step..$to"; }
echo "ok: resumed from $newest, ran steps $step..$to"

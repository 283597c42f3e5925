#!/usr/bin/env bash
# Several "hosts" on one machine: Linux network namespaces joined by a bridge, so that one mpirun
# job spans them the way it spans the nodes of a cluster (TCP between hosts, shared memory within
# one). Needs root and iproute2; where namespaces cannot be made it exits 77 ("skipped").
#
#   netns_hosts.sh [options] run -- COMMAND [ARGS...]   set up, run COMMAND on host0, tear down
#   netns_hosts.sh [options] up                         set up and leave running; prints its id
#   netns_hosts.sh exec ID -- COMMAND [ARGS...]         run COMMAND on host0 of a set made by `up`
#   netns_hosts.sh down [ID]                            remove set ID (without ID: every set of
#                                                       `run` whose creator has exited)
# Options:
#   --hosts N          hosts (default 2)                --slots S   MPI slots per host (default 2)
#   --rate RATE        shape each host's outgoing link with `tc tbf` (e.g. 200mbit; default none)
#   --timeout SECONDS  bound on COMMAND (default 240); on expiry it is killed and the run fails
#   --min-cross-bytes B  fail unless every host sent at least B bytes over its link (proof that
#                      the job's traffic crossed between hosts)
#
# Layout (nothing is created in the machine's own network namespace): namespace ID-sw holds the
# bridge br0 and one veth port pI per host; namespace ID-hI holds the other end, eth0, with address
# 10.254.13.(I+1)/24 and a hostname of its own, hostI (a UTS namespace per process tree, so moe-ep's
# and OpenMPI's messages name the host). /etc/netns/ID-hI/hosts maps the host names to those
# addresses for processes started with `ip netns exec`. Traffic stays on that subnet. Each host
# gives up on an unanswered TCP connection after ~3 s (net.ipv4.tcp_retries2=3 in its namespace):
# otherwise mpirun, aborting a job, waits ~15 min for the daemon of a host that was cut off.
#
# COMMAND runs on host0 (so mpirun runs there) with this environment:
#   OMPI_MCA_orte_default_hostfile  hostfile "hostI slots=S", one line per host
#   OMPI_MCA_plm_rsh_agent          an agent OpenMPI calls as it would call ssh ("agent HOST CMD"),
#                                   which runs CMD under `ip netns exec ID-HOST`
#   OMPI_MCA_btl=self,vader,tcp, OMPI_MCA_pml=ob1, OMPI_MCA_{btl,oob}_tcp_if_include=<subnet>,
#   OMPI_MCA_mpi_yield_when_idle=1 (else TCP over veth stalls to 4 ms ticks),
#   OMPI_MCA_btl_tcp_links=2 (else two-way bulk transfers halve)
#   MOE_MH_ID, MOE_MH_HOSTS (host names), MOE_MH_NAMESPACES (namespace of each host, same order)
# so a plain `mpirun -np 4 PROGRAM` places ranks 0-1 on host0 and 2-3 on host1.
set -uo pipefail

readonly skip_code=77
readonly subnet_prefix=10.254.13
readonly subnet=${subnet_prefix}.0/24
hosts=2 slots=2 rate="" limit=240 min_cross=0

say() { echo "multihost: $*" >&2; }
skip() { echo "SKIP: multihost tests need network namespaces: $*" >&2; exit "$skip_code"; }

state_dir() { echo "/run/moe-multihost/$1"; }

# Every namespace of set $1 (any number of hosts).
namespaces_of() { ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$1-(sw|h[0-9]+)$"; }

# Removes set $1: kills every process left in its namespaces (a process keeps a deleted namespace
# alive), then deletes the namespaces (which removes their veths and the bridge) and the files.
teardown() {
  local id=$1 ns pids
  for ns in $(namespaces_of "$id"); do
    for _ in 1 2 3 4 5 6 7 8 9 10; do
      pids=$(ip netns pids "$ns" 2>/dev/null | grep -vx "$$")
      [ -z "$pids" ] && break
      kill -9 $pids 2>/dev/null
      sleep 0.2
    done
    ip netns del "$ns" 2>/dev/null || say "could not delete namespace $ns"
    rm -rf "/etc/netns/$ns"
  done
  rmdir /etc/netns 2>/dev/null
  rm -rf "$(state_dir "$id")"
  rmdir /run/moe-multihost 2>/dev/null
  return 0
}

# Sets left behind by a harness that was killed (SIGKILL runs no trap): id moemhPID whose PID is gone.
reap_stale() {
  local id pid
  for id in $(ip netns list 2>/dev/null | awk '{print $1}' | sed -nE 's/^(moemh[0-9]+)-(sw|h[0-9]+)$/\1/p' | sort -u); do
    pid=${id#moemh}
    if ! kill -0 "$pid" 2>/dev/null; then
      say "removing set $id left by process $pid, which has exited"
      teardown "$id"
    fi
  done
}

check_can_run() {
  [ "$(id -u)" -eq 0 ] || skip "not root (uid $(id -u))"
  command -v ip >/dev/null || skip "no 'ip' (iproute2)"
  command -v unshare >/dev/null || skip "no 'unshare' (util-linux)"
  command -v timeout >/dev/null || skip "no 'timeout' (coreutils)"
  local probe="moemh$$-probe"
  ip netns add "$probe" 2>/dev/null || skip "'ip netns add' is not permitted here"
  if ! ip -n "$probe" link add dev probe0 type bridge 2>/dev/null ||
     ! ip -n "$probe" link add dev probe1 type veth peer name probe2 2>/dev/null; then
    ip netns del "$probe"; skip "cannot create a bridge and a veth pair inside a namespace"
  fi
  if ! ip netns exec "$probe" unshare --uts true 2>/dev/null; then
    ip netns del "$probe"; skip "cannot make a UTS namespace (unshare --uts)"
  fi
  ip netns del "$probe"
  if [ -n "$rate" ] && ! command -v tc >/dev/null; then
    echo "netns_hosts.sh: --rate needs 'tc' (iproute2)" >&2; exit 2
  fi
}

# Creates set $1 with $hosts hosts; returns non-zero on any failure (the caller tears down).
setup() {
  local id=$1 sw="$1-sw" dir i ns
  dir=$(state_dir "$id")
  mkdir -p "$dir" || return 1
  ip netns add "$sw" || return 1
  ip netns exec "$sw" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
  ip netns exec "$sw" sysctl -q -w net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
  ip -n "$sw" link set lo up || return 1
  ip -n "$sw" link add br0 type bridge || return 1
  ip -n "$sw" link set br0 up || return 1
  : >"$dir/hostfile"
  local etc_hosts="127.0.0.1 localhost"
  for ((i = 0; i < hosts; i++)); do
    etc_hosts+=$'\n'"${subnet_prefix}.$((i + 1)) host$i"
    echo "host$i slots=$slots" >>"$dir/hostfile"
  done
  for ((i = 0; i < hosts; i++)); do
    ns="$id-h$i"
    ip netns add "$ns" || return 1
    ip -n "$ns" link set lo up || return 1
    # IPv4 only: no IPv6 neighbour discovery chatter in the link counters.
    ip netns exec "$ns" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 2>/dev/null
    ip netns exec "$ns" sysctl -q -w net.ipv6.conf.default.disable_ipv6=1 2>/dev/null
    ip -n "$sw" link add "p$i" type veth peer name eth0 netns "$ns" || return 1
    ip -n "$sw" link set "p$i" master br0 || return 1
    ip -n "$sw" link set "p$i" up || return 1
    ip -n "$ns" addr add "${subnet_prefix}.$((i + 1))/24" dev eth0 || return 1
    ip -n "$ns" link set eth0 up || return 1
    if [ -n "$rate" ]; then
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 64kb latency 100ms || return 1
    fi
    mkdir -p "/etc/netns/$ns" || return 1
    echo "$etc_hosts" >"/etc/netns/$ns/hosts"
    # No name server: a name that is not in hosts fails at once instead of leaving the subnet.
    echo "options attempts:1 timeout:1" >"/etc/netns/$ns/resolv.conf"
  done
  cat >"$dir/agent" <<EOF
#!/bin/sh
# OpenMPI's rsh launcher calls this as it would call ssh: agent HOST COMMAND...
# COMMAND runs on HOST: in its network namespace, with its host name; this process stays on the
# calling host, as an ssh client does.
host=\$1
shift
case \$host in
  host[0-9]*) ;;
  *) echo "multihost agent: unknown host '\$host'" >&2; exit 1 ;;
esac
ip netns exec "$id-h\${host#host}" unshare --uts /bin/sh -c 'hostname "\$0" && exec /bin/sh -c "\$1"' "\$host" "\$*"
rc=\$?
# The daemon was killed (the host "died"). An ssh client to a host that dies does not return: mpirun
# learns of the loss from its own connection to the daemon, and says which node it lost. Exiting
# non-zero here would race that with OpenMPI's misleading "unable to reliably start one or more
# daemons"; other failures (a daemon that cannot start) pass through.
if [ "\$rc" -gt 128 ]; then
  echo "multihost agent: the OpenMPI daemon on \$host ended by signal \$((rc - 128))" >&2
  exit 0
fi
exit "\$rc"
EOF
  chmod +x "$dir/agent"
  local names="" nss=""
  for ((i = 0; i < hosts; i++)); do names+="host$i "; nss+="$id-h$i "; done
  cat >"$dir/env" <<EOF
export MOE_MH_ID=$id
export MOE_MH_HOSTS="${names% }"
export MOE_MH_NAMESPACES="${nss% }"
export OMPI_MCA_orte_default_hostfile=$dir/hostfile
export OMPI_MCA_plm_rsh_agent=$dir/agent
export OMPI_MCA_pml=ob1
export OMPI_MCA_btl=self,vader,tcp
export OMPI_MCA_btl_tcp_if_include=$subnet
export OMPI_MCA_oob_tcp_if_include=$subnet
export OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_btl_tcp_links=2
EOF
  # Within the bound below, with no reply from its peer, a host gives up on a TCP connection after
  # ~3 s (retries after 0.2, 0.4, 0.8, 1.6 s) instead of ~15 min (the kernel's tcp_retries2 default): a host cut off mid-job is then seen
  # as lost by mpirun, as keepalive would see it on a real cluster.
  for ((i = 0; i < hosts; i++)); do
    ip netns exec "$id-h$i" sysctl -q -w net.ipv4.tcp_retries2=3 ||
      say "note: cannot shorten TCP's give-up time on host$i; a cut link is then seen late"
  done
  return 0
}

# The command line that runs "$@" on host0 of set $1, with the set's environment.
host0_command() {
  local id=$1
  shift
  host0_cmd=(ip netns exec "$id-h0" unshare --uts /bin/sh -c
             '. "$0" && hostname host0 && exec "$@"' "$(state_dir "$id")/env" "$@")
}

# Bytes each host sent and received over its link; fails when one sent fewer than $2.
report_traffic() {
  local id=$1 min=$2 i ns tx rx ok=0
  for ((i = 0; i < hosts; i++)); do
    ns="$id-h$i"
    tx=$(ip netns exec "$ns" cat /sys/class/net/eth0/statistics/tx_bytes 2>/dev/null || echo 0)
    rx=$(ip netns exec "$ns" cat /sys/class/net/eth0/statistics/rx_bytes 2>/dev/null || echo 0)
    say "host$i sent $tx bytes and received $rx bytes over its link"
    if [ "$tx" -lt "$min" ]; then
      say "FAIL: host$i sent fewer than $min bytes: the job's traffic did not cross between hosts"
      ok=1
    fi
  done
  return $ok
}

while [ $# -gt 0 ]; do
  case $1 in
    --hosts) hosts=$2; shift 2 ;;
    --slots) slots=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --timeout) limit=$2; shift 2 ;;
    --min-cross-bytes) min_cross=$2; shift 2 ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { sed -n '2,/^set /p' "$0" | sed '$d'; exit 2; }
action=$1
shift
case $hosts in [2-9]) ;; *) echo "netns_hosts.sh: --hosts must be 2..9" >&2; exit 2 ;; esac

case $action in
  run)
    [ "${1:-}" = "--" ] && shift
    [ $# -ge 1 ] || { echo "netns_hosts.sh run: no command" >&2; exit 2; }
    check_can_run
    reap_stale
    id="moemh$$"
    trap 'teardown "$id"' EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    setup "$id" || { say "FAIL: could not set up $hosts hosts"; exit 1; }
    say "$hosts hosts x $slots slots (set $id, subnet $subnet${rate:+, links shaped to $rate}), bound ${limit} s: $*"
    start=$(date +%s%N)
    host0_command "$id" "$@"
    # In the background, so that a signal to this script is handled at once (bash runs a trap
    # only after the foreground command ends).
    timeout -k 5 "$limit" "${host0_cmd[@]}" &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null; exit 130' INT
    trap 'kill -TERM "$child" 2>/dev/null; exit 143' TERM
    wait "$child"
    rc=$?
    say "command ended with exit $rc after $((($(date +%s%N) - start) / 1000000)) ms"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
      say "FAIL: the command did not end within ${limit} s"
      rc=1
    fi
    report_traffic "$id" "$min_cross" || { [ "$rc" -eq 0 ] && rc=1; }
    exit "$rc"
    ;;
  up)
    check_can_run
    reap_stale
    id="moemhup$$"
    # The set outlives this process: `down` (or the next run, seeing the creator gone) removes it.
    setup "$id" || { teardown "$id"; say "FAIL: could not set up"; exit 1; }
    echo "$id"
    say "up: $hosts hosts; run commands with: $0 exec $id -- COMMAND; remove with: $0 down $id"
    ;;
  exec)
    id=$1
    shift
    [ "${1:-}" = "--" ] && shift
    [ -f "$(state_dir "$id")/env" ] || { echo "netns_hosts.sh: no set $id" >&2; exit 2; }
    host0_command "$id" "$@"
    exec "${host0_cmd[@]}"
    ;;
  down)
    if [ $# -ge 1 ]; then teardown "$1"; else reap_stale; fi
    ;;
  *) echo "netns_hosts.sh: unknown action '$action' (run, up, exec, down)" >&2; exit 2 ;;
esac

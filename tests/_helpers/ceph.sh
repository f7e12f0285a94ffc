#!/usr/bin/env bash
# A throw-away one-node Ceph cluster for blkgraph's rbd tests and benchmarks:
# one monitor and one memstore OSD on 127.0.0.1, no systemd, no mgr, every
# file (config, keyrings, pid files, logs, admin sockets) inside DIR.
#
#   tests/_helpers/ceph.sh start DIR [--owner PID]   # prints DIR/ceph.conf when I/O works
#   tests/_helpers/ceph.sh status DIR                # exit 0 when both daemons run
#   tests/_helpers/ceph.sh stop DIR [--purge]        # stops what start started
#
# start is idempotent: a running cluster just prints its conf; a half-up one
# (a daemon died) is stopped and rebuilt; a stopped one is rebuilt (memstore
# keeps nothing across a stop). With --owner PID a watcher stops the cluster
# once PID has exited and removes its files (a killed test run leaves
# nothing behind); stop --purge does the same by hand.
#
# Environment:
#   CEPH_MON_PORT      msgr2 port of the monitor (msgr1 uses +1); default: a
#                      random free even port in 20000-59998, so parallel runs
#                      never collide
#   CEPH_AUTH          cephx (default) or none
#   CEPH_POOL          pool created for images (default rbd)
#   CEPH_PG_NUM        placement groups of that pool (default 8)
#   CEPH_STORE_BYTES   memstore capacity (default 8 GiB; a full memstore OSD
#                      blocks writes forever, so keep it above what you write)
#   CEPH_MEMSTORE_PAGE_SET  true (default: 64 KiB pages, small overwrites do
#                      not grow the OSD) or false
#   CEPH_START_TIMEOUT seconds to wait for readiness (default 60)
#
# Only processes whose pid files live in DIR/run, and whose command line
# names DIR's config, are ever signalled.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop|status DIR [--owner PID] [--purge]" >&2
  exit 2
}

[ $# -ge 2 ] || usage
cmd=$1
dir=$2
shift 2
owner=""
purge=0
while [ $# -gt 0 ]; do
  case $1 in
    --owner) owner=${2:?--owner needs a pid}; shift 2 ;;
    --purge) purge=1; shift ;;
    *) usage ;;
  esac
done

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
conf=$dir/ceph.conf
run=$dir/run
DAEMONS="mon.a osd.0"

log() { echo "ceph.sh: $*" >&2; }
# Milliseconds since the epoch (no bc on a bare Debian).
now_ms() { echo $(($(date +%s%N) / 1000000)); }
uuid() { cat /proc/sys/kernel/random/uuid; }

# Whether process $1 exists and is not a zombie.
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  # Field 3 of /proc/PID/stat is the state; the name (field 2) may hold spaces.
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# Prints the pid of daemon $1 when it runs as one of ours.
daemon_pid() {
  local f=$run/$1.pid pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  alive "$pid" || return 1
  # Ours: a ceph daemon started with this directory's config.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "ceph-.* -c $conf" || return 1
  echo "$pid"
}

running_count() {
  local n=0 d
  for d in $DAEMONS; do
    if daemon_pid "$d" >/dev/null; then n=$((n + 1)); fi
  done
  echo $n
}

stop_cluster() {
  local d pid i
  for f in "$run"/watcher.pid; do
    [ -s "$f" ] || continue
    pid=$(cat "$f")
    if [ "$pid" != "$$" ] && alive "$pid" && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "ceph.sh watch $dir"; then
      kill "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
  done
  # The OSD first, and the monitor only once it has gone: an OSD stopped
  # while its monitor runs exits at once (it reports itself down); without a
  # monitor it waits for a 5 s timeout.
  for d in osd.0 mon.a; do
    if pid=$(daemon_pid "$d"); then
      kill -TERM "$pid" 2>/dev/null || true
      # Up to 5 s for a clean exit, then SIGKILL.
      for i in $(seq 50); do
        alive "$pid" || break
        sleep 0.1
      done
      if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
  done
  rm -f "$run"/*.pid
}

pick_port() {
  if [ -n "${CEPH_MON_PORT:-}" ]; then
    echo "$CEPH_MON_PORT"
    return
  fi
  local used p i
  # Local ports in use, from /proc (no ss on a bare Debian): field 2 is ADDR:PORT in hex.
  used=$(cat /proc/net/tcp /proc/net/tcp6 2>/dev/null | awk 'FNR > 1 && split($2, a, ":") == 2 {print a[2]}' | sort -u |
    while read -r hex; do echo $((16#$hex)); done)
  for i in $(seq 100); do
    p=$((20000 + (RANDOM % 20000) * 2))
    if ! grep -qx "$p" <<<"$used" && ! grep -qx "$((p + 1))" <<<"$used"; then
      echo $p
      return
    fi
  done
  log "no free port pair found"
  exit 1
}

write_conf() {
  local port=$1 fsid=$2 auth=${CEPH_AUTH:-cephx}
  case $auth in cephx | none) ;; *) log "CEPH_AUTH must be cephx or none, not '$auth'"; exit 2 ;; esac
  cat >"$conf" <<EOF
# Written by tests/_helpers/ceph.sh: a test cluster, not for production.
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]
public network = 127.0.0.0/8
auth cluster required = $auth
auth service required = $auth
auth client required = $auth
keyring = $dir/keyring
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
osd crush chooseleaf type = 0
osd pool default pg autoscale mode = off
# Proposals every 0.1 s instead of 1 s: ready in ~2 s instead of ~9 s.
paxos propose interval = 0.1
paxos min wait = 0.01
osd objectstore = memstore
memstore device bytes = ${CEPH_STORE_BYTES:-8589934592}
memstore page set = ${CEPH_MEMSTORE_PAGE_SET:-true}
osd memory target = 939524096
# A killed client's watch (and so its exclusive lock) expires after 10 s, not 30.
osd client watch timeout = 10
ms bind ipv6 = false

# Admin sockets, logs and pid files for the daemons only: clients (librbd in
# tests, the rbd CLI) must not race for one client.admin.asok.
[mon]
mon data = $dir/mon
log file = $dir/log/\$name.log
pid file = $run/\$name.pid
admin socket = $run/\$name.asok
mon cluster log file = $dir/log/cluster.log

[osd]
osd data = $dir/osd
keyring = $dir/osd/keyring
log file = $dir/log/\$name.log
pid file = $run/\$name.pid
admin socket = $run/\$name.asok
EOF
}

start_cluster() {
  local t0 port fsid uuid secret i
  t0=$(now_ms)
  stop_cluster
  rm -rf "$dir/mon" "$dir/osd" "$dir/log" "$run" "$dir"/keyring "$dir"/*.keyring "$dir/monmap" "$conf"
  mkdir -p "$dir/mon" "$dir/osd" "$dir/log" "$run"
  port=$(pick_port)
  fsid=$(uuid)
  write_conf "$port" "$fsid"
  local q=(-c "$conf")
  ceph-authtool --create-keyring "$dir/mon.keyring" --gen-key -n mon. --cap mon 'allow *' >/dev/null
  ceph-authtool --create-keyring "$dir/keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' >/dev/null
  ceph-authtool "$dir/mon.keyring" --import-keyring "$dir/keyring" >/dev/null
  monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$port,v1:127.0.0.1:$((port + 1))]" "$dir/monmap" >/dev/null
  ceph-mon "${q[@]}" --mkfs -i a --monmap "$dir/monmap" --keyring "$dir/mon.keyring" 2>>"$dir/log/setup.log"
  ceph-mon "${q[@]}" -i a 2>>"$dir/log/setup.log" 9>&-
  uuid=$(uuid)
  secret=$(ceph-authtool --gen-print-key)
  printf '{"cephx_secret": "%s"}\n' "$secret" >"$dir/osd-secret.json"
  local id
  id=$(ceph "${q[@]}" --connect-timeout 20 osd new "$uuid" -i "$dir/osd-secret.json")
  [ "$id" = 0 ] || { log "expected osd id 0, got '$id'"; exit 1; }
  ceph-authtool --create-keyring "$dir/osd/keyring" --name osd.0 --add-key "$secret" >/dev/null
  ceph-osd "${q[@]}" -i 0 --mkfs --osd-uuid "$uuid" 2>>"$dir/log/setup.log"
  ceph-osd "${q[@]}" -i 0 2>>"$dir/log/setup.log" 9>&-
  local pool=${CEPH_POOL:-rbd} pg=${CEPH_PG_NUM:-8}
  ceph "${q[@]}" osd pool create "$pool" "$pg" "$pg" >/dev/null 2>>"$dir/log/setup.log"
  ceph "${q[@]}" osd pool application enable "$pool" rbd >/dev/null 2>>"$dir/log/setup.log"
  # Ready means an object write succeeds (HEALTH_OK comes earlier than that).
  local deadline probe
  deadline=$(($(now_ms) + ${CEPH_START_TIMEOUT:-60} * 1000))
  probe="$dir/probe"
  echo probe >"$probe"
  until timeout 10 rados "${q[@]}" -p "$pool" put blkgraph-probe "$probe" 2>/dev/null; do
    if [ "$(now_ms)" -gt "$deadline" ]; then
      log "cluster in $dir not ready after ${CEPH_START_TIMEOUT:-60} s; logs in $dir/log"
      stop_cluster
      exit 1
    fi
    sleep 0.1
  done
  rados "${q[@]}" -p "$pool" rm blkgraph-probe
  rm -f "$probe"
  local ms=$(($(now_ms) - t0))
  log "cluster up in $((ms / 1000)).$(printf %03d $((ms % 1000))) s (mon 127.0.0.1:$port, $dir)"
}

watch_owner() {
  # Detached: stop the cluster once the owner process has gone.
  local pid=$1
  echo $$ >"$run/watcher.pid"
  while alive "$pid"; do sleep 1; done
  exec 9>"$dir/.lock"
  flock 9
  stop_cluster
  purge_dir
  # The directory was this owner's alone (tests name it for their process).
  rm -f "$dir/.lock"
  rmdir "$dir" 2>/dev/null || true
}

purge_dir() {
  rm -rf "$dir/mon" "$dir/osd" "$dir/log" "$run" "$dir"/*.keyring "$dir/keyring" "$dir/monmap" "$conf" "$dir/osd-secret.json"
}

case $cmd in
  start)
    exec 9>"$dir/.lock"
    flock 9
    n=$(running_count)
    if [ "$n" -eq 2 ]; then
      log "already running (2 daemons) in $dir"
    else
      [ "$n" -eq 0 ] || log "half up ($n of 2 daemons): rebuilding"
      trap 'stop_cluster' ERR
      start_cluster
      trap - ERR
    fi
    if [ -n "$owner" ]; then
      mkdir -p "$run"
      setsid "$0" watch "$dir" --owner "$owner" </dev/null >/dev/null 2>&1 9>&- &
    fi
    echo "$conf"
    ;;
  watch)
    [ -n "$owner" ] || usage
    watch_owner "$owner"
    ;;
  status)
    n=$(running_count)
    echo "$n of 2 daemons running in $dir"
    [ "$n" -eq 2 ]
    ;;
  stop)
    exec 9>"$dir/.lock"
    flock 9
    stop_cluster
    if [ $purge -eq 1 ]; then purge_dir; fi
    ;;
  *) usage ;;
esac

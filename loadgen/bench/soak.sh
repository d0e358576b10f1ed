#!/usr/bin/env bash
# Soak: one teeproxy process under full load for three phases, its RSS, open fds, threads
# and runtime tasks sampled every second. Not run in CI (about 4.5 minutes).
#
#   loadgen/bench/soak.sh              build (release) and run: 3 phases of 60 s
#   loadgen/bench/soak.sh --no-build   use the release binaries already in target/release
#   SOAK_SECS=20 loadgen/bench/soak.sh shorter phases (flatness is then judged on shorter windows)
#
# Phases (cumulative, same proxy process), after 3 s of idle baseline and a warm-up of half
# a phase (phase 1's load, reported but not judged: RSS climbs during the first minute
# under load while the allocator settles, see RESULTS.md):
#   1. black-holed-shadow: closed-loop load on a route whose shadow accepts and never answers;
#   2. dead-endpoint:      the same, on a route whose primary cluster has a closed port
#                          among two healthy endpoints;
#   3. slowloris:          phase 2's load plus `loadgen slowloris` connections (half trickle
#                          an endless request head one byte per 200 ms, half stay silent,
#                          each reconnects when closed) that teeproxy must close at
#                          limits.request_head_timeout;
#   then 35 s idle: once the black-holed copies still queued have timed out (5 s per 256)
#   and the pooled upstream connections have idled out (10 s), connections, tasks and fds
#   must be back at the baseline.
#
# Prints one line per sample and a summary per phase (first/last/max of each series,
# flatness, the healthy traffic's requests, errors and p50/p99); the same goes to
# target/soak/summary.txt, with the raw samples (samples.tsv) and reports (*.json).
# Exit status 1 when a check fails. Every process it starts is stopped by PID on exit;
# traffic stays on 127.0.0.1.
set -euo pipefail

BUILD=1
[ "${1:-}" = "--no-build" ] && BUILD=0
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/target/soak"
SECS=${SOAK_SECS:-60}
CONNS=${SOAK_CONNS:-48}
SLOW_CONNS=${SOAK_SLOWLORIS:-300}
HEAD_TIMEOUT_S=5
IDLE_SECS=35
WARMUP_SECS=$((SECS / 2))
BASE=${SOAK_PORT_BASE:-27000}
P1=$((BASE + 1)); P2=$((BASE + 2)); HOLE=$((BASE + 3)); DEAD=$((BASE + 4))
PROXY=$((BASE + 80)); ADMIN=$((BASE + 901))
PIDS=()

# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

start() { # start CMD...: run in the background, remember the PID in LAST
  "$@" &
  PIDS+=("$!")
  LAST=$!
}

forget() { # forget PID: it was waited for; never signal its (reusable) number again
  local keep=() pid
  for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}

stop() { # stop PID: SIGTERM, wait up to 15 s, then SIGKILL
  kill "$1" 2>/dev/null || true
  for _ in $(seq 1 150); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$1" 2>/dev/null; then kill -9 "$1" 2>/dev/null || true; fi
  wait "$1" 2>/dev/null || true
  forget "$1"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # wait_port PORT: up to 10 s
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2
  return 1
}

rm -rf "$OUT"
mkdir -p "$OUT/bin"
if [ "$BUILD" = 1 ]; then
  echo "== build (release)" >&2
  (cd "$ROOT" && cargo build --release --locked -q -p teeproxy -p teeproxy-loadgen)
fi
# Private copies: a rebuild during the run cannot swap the binaries under it.
cp "$ROOT/target/release/teeproxy" "$ROOT/target/release/loadgen" "$OUT/bin/"
BIN="$OUT/bin"
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

for p in $P1 $P2 $HOLE $DEAD $PROXY $ADMIN; do
  if port_open "$p"; then echo "port $p is in use (set SOAK_PORT_BASE)" >&2; exit 2; fi
done

start "$BIN/loadgen" upstream --listen 127.0.0.1:$P1 --name primary-1 2>/dev/null
start "$BIN/loadgen" upstream --listen 127.0.0.1:$P2 --name primary-2 2>/dev/null
start "$BIN/loadgen" upstream --listen 127.0.0.1:$HOLE --name hole --fault blackhole 2>/dev/null
for p in $P1 $P2 $HOLE; do wait_port "$p"; done

cat >"$OUT/tee.yaml" <<EOF
listeners: [{ name: public, address: "127.0.0.1:$PROXY" }]
admin: { address: "127.0.0.1:$ADMIN" }
clusters:
  healthy: { endpoints: ["http://127.0.0.1:$P1", "http://127.0.0.1:$P2"], idle_timeout: 10s }
  mixed: { endpoints: ["http://127.0.0.1:$P1", "http://127.0.0.1:$DEAD", "http://127.0.0.1:$P2"], idle_timeout: 10s }
  hole: { endpoints: ["http://127.0.0.1:$HOLE"], idle_timeout: 10s }
routes:
  - { name: healthy, match: { path_prefix: /healthy/ }, primary: healthy, shadows: [{ cluster: hole }] }
  - { name: dead-endpoint, match: { path_prefix: /mixed/ }, primary: mixed, shadows: [{ cluster: hole }] }
limits: { request_head_timeout: ${HEAD_TIMEOUT_S}s }
access_log: { enabled: false }
drain_timeout: 5s
shadow_drain: 1s
EOF
start "$BIN/teeproxy" --config "$OUT/tee.yaml" 2>"$OUT/teeproxy.log"
PROXY_PID=$LAST
wait_port "$PROXY"
wait_port "$ADMIN"

SAMPLES="$OUT/samples.tsv"
printf 'phase\tt\trss_kib\tfds\tthreads\ttasks\topen_conns\thead_timeouts\tresp_5xx\tshadow_drops\tconnect_errors\tshadow_held\n' >"$SAMPLES"

sample() { # sample PHASE T: one row in samples.tsv and one line on stdout
  local rss fds threads m
  if ! kill -0 "$PROXY_PID" 2>/dev/null; then echo "teeproxy (pid $PROXY_PID) exited: see $OUT/teeproxy.log" >&2; exit 1; fi
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$PROXY_PID/status")
  threads=$(awk '/^Threads/ {print $2}' "/proc/$PROXY_PID/status")
  fds=$(find "/proc/$PROXY_PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
  m=$(curl -s --max-time 2 "http://127.0.0.1:$ADMIN/metrics" | awk '
    $1 == "teeproxy_runtime_tasks" { tasks = $2 }
    $1 == "teeproxy_open_connections{listener=\"public\"}" { open = $2 }
    /^teeproxy_connections_closed_total\{.*reason="head_timeout"/ { head += $2 }
    /^teeproxy_requests_total\{.*status_class="5xx"/ { e5 += $2 }
    /^teeproxy_shadow_dropped_total\{/ { drops += $2 }
    /^teeproxy_upstream_errors_total\{.*leg="primary".*kind="connect"/ { conn += $2 }
    /^teeproxy_shadow_(queue_depth|in_flight)\{/ { held += $2 }
    END { printf "%d\t%d\t%d\t%d\t%d\t%d\t%d", tasks, open, head, e5, drops, conn, held }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$rss" "$fds" "$threads" "$m" >>"$SAMPLES"
  tail -n 1 "$SAMPLES" | awk -F'\t' '{printf "%-18s t=%3ds rss=%6.1fMiB fds=%4d threads=%2d tasks=%5d open=%4d head_timeouts=%6d 5xx=%d drops=%d connect_errors=%d shadow_queued=%d\n", $1, $2, $3 / 1024, $4, $5, $6, $7, $8, $9, $10, $11, $12}'
}

sample_for() { # sample_for PHASE SECONDS: one sample per second, on the second
  local next now d
  next=$(date +%s%N)
  for t in $(seq 1 "$2"); do
    next=$((next + 1000000000))
    now=$(date +%s%N)
    d=$((next - now))
    if [ "$d" -gt 0 ]; then sleep "$((d / 1000000000)).$(printf '%09d' $((d % 1000000000)))"; fi
    sample "$1" "$t"
  done
}

run_phase() { # run_phase NAME SECONDS PATH_PREFIX SLOWLORIS(0|1)
  local name=$1 secs=$2 prefix=$3 slow=$4 drive slow_pid=""
  echo "== phase $name: ${secs}s, $CONNS connections closed loop on ${prefix}*$([ "$slow" = 1 ] && echo ", $SLOW_CONNS slowloris connections (mixed, 200 ms per byte)")"
  "$BIN/loadgen" drive --url "http://127.0.0.1:$PROXY" --connections "$CONNS" --duration "$((secs + 2))s" \
    --path "${prefix}users/1:3" --path "${prefix}orders" --timeout 5s --quiet --json >"$OUT/$name.drive.json" &
  drive=$!
  PIDS+=("$drive")
  if [ "$slow" = 1 ]; then
    "$BIN/loadgen" slowloris --target "127.0.0.1:$PROXY" --connections "$SLOW_CONNS" --interval 200ms \
      --duration "$((secs + 2))s" --ramp "${HEAD_TIMEOUT_S}s" --mode mixed --json >"$OUT/$name.slowloris.json" &
    slow_pid=$!
    PIDS+=("$slow_pid")
  fi
  sample_for "$name" "$secs"
  wait "$drive" || echo "loadgen drive exited with an error" >&2
  forget "$drive"
  if [ -n "$slow_pid" ]; then
    wait "$slow_pid" || echo "loadgen slowloris exited with an error" >&2
    forget "$slow_pid"
  fi
}

START_DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(cd "$ROOT" && git status --porcelain -- proxy loadgen 2>/dev/null | wc -l)
echo "== soak: teeproxy pid $PROXY_PID, commit $COMMIT ($DIRTY changed files in proxy/ and loadgen/), $(nproc) CPUs, $START_DATE"
sample_for baseline 3
run_phase warm-up "$WARMUP_SECS" /healthy/ 0
run_phase black-holed-shadow "$SECS" /healthy/ 0
run_phase dead-endpoint "$SECS" /mixed/ 0
run_phase slowloris "$SECS" /mixed/ 1
echo "== idle: ${IDLE_SECS}s without load"
sample_for idle "$IDLE_SECS"
stop "$PROXY_PID"

STATUS=0
python3 - "$OUT" "$SECS" "$CONNS" "$SLOW_CONNS" "$HEAD_TIMEOUT_S" "$START_DATE" "$COMMIT" "$DIRTY" "$(nproc)" \
  >"$OUT/summary.txt" <<'PY' || STATUS=$?
import json, os, sys
out, secs, conns, slow_conns, head_s, date, commit, dirty, cpus = sys.argv[1:10]
secs, conns, slow_conns, head_s = int(secs), int(conns), int(slow_conns), float(head_s)
cols = None
rows = {}
for line in open(os.path.join(out, "samples.tsv")):
    f = line.rstrip("\n").split("\t")
    if cols is None:
        cols = f
        continue
    r = dict(zip(cols, f))
    rows.setdefault(r["phase"], []).append({k: (v if k == "phase" else float(v)) for k, v in r.items()})

# Flatness: skip a warm-up, then compare the mean of the last W samples with the mean of
# the first W samples after the warm-up. Flat = no growth beyond TOL plus a small
# absolute floor (shrinking is flat).
WARM = min(10, secs // 6)
W = min(10, max(1, (secs - WARM) // 4))
TOL = 0.10
SERIES = [("rss_kib", "RSS MiB", 1 / 1024, 1024), ("fds", "open fds", 1, 8),
          ("threads", "threads", 1, 0), ("tasks", "runtime tasks", 1, 8),
          ("open_conns", "open client connections", 1, 8),
          ("shadow_held", "shadow copies queued or in flight", 1, 8)]
failures = []
p = lambda *a: print(*a)
p(f"# teeproxy soak, {date}")
p(f"commit {commit} ({dirty} files changed in proxy/ and loadgen/ against it), {cpus} CPUs, "
  f"{secs} s sampled per phase (the load runs 2 s longer), closed loop with {conns} connections, {slow_conns} slowloris connections in phase 3, "
  f"request_head_timeout {head_s:g} s")
p(f"flat: mean of the last {W} samples <= {1 + TOL:.2f} x mean of samples {WARM + 1}..{WARM + W} "
  f"(skipping the phase's first {WARM} s) + a floor (RSS 1 MiB, fds/tasks/connections 8); shrinking is flat")

def fmt(v, scale):
    v = v * scale
    return f"{v:.1f}" if scale != 1 else f"{v:.0f}"

# Counters are cumulative: a phase's figure is its last value minus the previous phase's.
order = list(rows)
prev = {}
for i, ph in enumerate(order):
    prev[ph] = rows[order[i - 1]][-1] if i > 0 else rows[ph][0]

def d(ph, col):
    return int(rows[ph][-1][col] - prev[ph][col])

for ph in order:
    rs = rows[ph]
    p()
    p(f"## {ph} ({len(rs)} samples)")
    judged = ph not in ("baseline", "idle", "warm-up")
    if ph == "warm-up":
        p("(not judged for flatness)")
    for col, label, scale, floor in SERIES:
        vals = [r[col] for r in rs]
        line = f"- {label}: first {fmt(vals[0], scale)}, last {fmt(vals[-1], scale)}, max {fmt(max(vals), scale)}"
        if judged:
            a = sum(vals[WARM:WARM + W]) / W
            b = sum(vals[-W:]) / W
            flat = b <= a * (1 + TOL) + floor
            growth = (b - a) / a * 100 if a else 0.0
            if not flat:
                failures.append(f"{ph}: {label} grew")
            line += (f"; early mean {fmt(a, scale)}, late mean {fmt(b, scale)} ({growth:+.1f} %): "
                     f"{'flat' if flat else 'NOT FLAT'}")
            if col == "rss_kib":
                # Least-squares slope over the last 30 samples, for the record (not judged).
                ys = vals[-30:]
                n = len(ys)
                mx, my = (n - 1) / 2, sum(ys) / n
                sxx = sum((x - mx) ** 2 for x in range(n)) or 1
                slope = sum((x - mx) * (y - my) for x, y in enumerate(ys)) / sxx
                line += f"; slope over the last {n} s {slope * 60 / 1024:+.2f} MiB/min"
        p(line)
    if ph in ("baseline", "idle"):
        continue
    p(f"- teeproxy counters over the phase: 5xx answers {d(ph, 'resp_5xx')}, primary connect errors {d(ph, 'connect_errors')}, "
      f"shadow copies dropped {d(ph, 'shadow_drops')}, connections closed at the head limit {d(ph, 'head_timeouts')}")
    try:
        r = json.load(open(os.path.join(out, f"{ph}.drive.json")))
    except (OSError, ValueError):
        failures.append(f"{ph}: no drive report")
        p("- healthy traffic: no report")
        continue
    errs = sum(r["errors"].values())
    non2xx = sum(v for k, v in r["statuses"].items() if k != "2xx")
    lat = r["latency_ms"]
    ok = errs == 0 and non2xx == 0
    if not ok:
        failures.append(f"{ph}: healthy traffic had {errs} errors and {non2xx} non-2xx answers")
    p(f"- healthy traffic: {r['completed']} requests, {r['throughput_rps']:.0f} req/s, p50 {lat['p50']} ms, "
      f"p99 {lat['p99']} ms, max {lat['max']} ms; statuses {r['statuses']}; errors {errs} {r['errors']}: "
      f"{'error-free' if ok else 'ERRORS'}")
    sl = os.path.join(out, f"{ph}.slowloris.json")
    if os.path.exists(sl):
        try:
            s = json.load(open(sl))
        except ValueError:
            failures.append(f"{ph}: no slowloris report")
            continue
        lt = s["lifetime_ms"]
        lo, hi = head_s * 1000 - 50, head_s * 1000 + 2000
        at_limit = s["closed_by_server"] > 0 and lt["min"] is not None and lo <= lt["min"] and lt["max"] <= hi
        # Slot i first connects at i * head / n (the ramp), then is closed every head
        # seconds until the end of its run (2 s longer than the sampling).
        run_s = secs + 2
        expected = sum(int((run_s - i * head_s / slow_conns) // head_s) for i in range(slow_conns))
        if not at_limit:
            failures.append(f"{ph}: slowloris connections not closed at the head limit")
        p(f"- slowloris: {s['opened']} connections opened, {s['closed_by_server']} closed by teeproxy "
          f"({expected} expected at the head limit in {run_s} s), {s['answered']} of them after an answer, "
          f"{s['open_at_end']} open at the end, {s['connect_errors']} connect errors; lifetime min {lt['min']} ms, "
          f"p50 {lt['p50']} ms, p99 {lt['p99']} ms, max {lt['max']} ms: "
          f"{'closed at the head limit' if at_limit else 'NOT closed at the head limit'} "
          f"(every lifetime within {lo / 1000:g}..{hi / 1000:g} s); teeproxy counted "
          f"{int(rows[order[-1]][-1]['head_timeouts'] - prev[ph]['head_timeouts'])} head-limit closes from the "
          f"phase's start to the end of the run")

# After the load: nothing left open, tasks and fds back near the baseline.
if "idle" in rows and "baseline" in rows:
    base, end = rows["baseline"][-1], rows["idle"][-1]
    p()
    p("## after the load")
    back = end["open_conns"] == 0 and end["tasks"] <= base["tasks"] + 8 and end["fds"] <= base["fds"] + 8
    if not back:
        failures.append("idle: connections, tasks or fds did not come back down")
    p(f"- baseline -> {len(rows['idle'])} s after the load: open connections {base['open_conns']:.0f} -> {end['open_conns']:.0f}, "
      f"runtime tasks {base['tasks']:.0f} -> {end['tasks']:.0f}, fds {base['fds']:.0f} -> {end['fds']:.0f}, "
      f"threads {base['threads']:.0f} -> {end['threads']:.0f}, RSS {base['rss_kib'] / 1024:.1f} -> {end['rss_kib'] / 1024:.1f} MiB: "
      f"{'back down' if back else 'NOT back down'} (open connections 0, tasks and fds within 8 of the baseline)")
p()
p("verdict: " + ("all checks passed" if not failures else "FAILED: " + "; ".join(failures)))
sys.exit(1 if failures else 0)
PY
echo
cat "$OUT/summary.txt"
echo "(samples: $SAMPLES; summary: $OUT/summary.txt)"
exit "$STATUS"

#!/bin/bash
# The daemon's own cost (issue 12; a benchmark, not a CI test; root): start-up peak RSS (VmHWM) and
# RSS at rest, then a refused-connect storm over PORTS distinct ports (default 10000) for 10 s in a
# private netns with a scrape every second (SCRAPES=0: none) — the daemon's CPU over the storm
# (/proc/PID/stat utime+stime) and its RSS after — then 50 scrapes one after the other with the
# count maps full: their wall time (curl) and the daemon's CPU per scrape.
# Usage, from the workspace root after `cargo build --release -p rstwatch -p rstwatch-tests`:
#   tests/daemon-cost.sh [BIN [PORTS]]      (BIN: target/release/rstwatch)
# Compare with aya's own floor: cargo run --release -p rstwatch --example aya_floor
set -u
BIN=${1:-./target/release/rstwatch}
PORTS=${2:-10000}
ADDR=127.0.0.1:19976
NS=rstwcost-$$
ip netns add $NS
ip -n $NS link set lo up
"$BIN" run --metrics-addr $ADDR > /tmp/daemon-cost-$$.log 2>&1 &
D=$!
trap 'kill $D 2>/dev/null; wait $D 2>/dev/null; ip netns del $NS' EXIT
for _ in $(seq 1 300); do curl -sf -o /dev/null http://$ADDR/metrics && break; sleep 0.1; done
kib() { awk -v f="$1:" '$1 == f {print $2}' /proc/$D/status; }
cpu_ticks() { awk '{print $14 + $15}' /proc/$D/stat; }
echo "start-up peak (VmHWM) $(kib VmHWM) kB"
sleep 5
curl -sf -o /dev/null http://$ADDR/metrics
echo "at rest 5 s later, after a scrape (VmRSS) $(kib VmRSS) kB"

HZ=$(getconf CLK_TCK)
echo 5 > /proc/$D/clear_refs # resets VmHWM to the current RSS
t0=$(cpu_ticks); s0=$(date +%s.%N)
(for _ in $(seq 1 "${SCRAPES:-10}"); do curl -sf -o /dev/null http://$ADDR/metrics; sleep 1; done) &
C=$!
./target/release/storm --netns /run/netns/$NS --threads 1 --port 20000 --ports "$PORTS" --duration-ms 10000 > /tmp/daemon-cost-storm-$$.json
t1=$(cpu_ticks); s1=$(date +%s.%N)
wait $C
echo "storm: $(head -c 200 /tmp/daemon-cost-storm-$$.json)"
echo "daemon CPU during the storm: $(echo "scale=2; 100 * ($t1 - $t0) / $HZ / ($s1 - $s0)" | bc) % of a core (${SCRAPES:-10} scrapes included)"
echo "during the storm: VmHWM $(kib VmHWM) kB; after it VmRSS $(kib VmRSS) kB"

c0=$(cpu_ticks)
for _ in $(seq 1 50); do curl -s -o /dev/null -w "%{time_total}\n" http://$ADDR/metrics; done | sort -n |
  awk '{a[NR] = $1} END {printf "scrape ms: p50 %.1f p90 %.1f max %.1f (50 scrapes)\n", a[25] * 1000, a[45] * 1000, a[50] * 1000}'
c1=$(cpu_ticks)
echo "daemon CPU per scrape: $(echo "scale=1; 1000 * ($c1 - $c0) / $HZ / 50" | bc) ms"
curl -s http://$ADDR/metrics | grep '^rstwatch_map_entries' | tr '\n' ' '
echo
echo "after the scrapes: VmRSS $(kib VmRSS) kB"

#!/bin/bash
# Soak (a benchmark, not a CI test; root): a refused-connect storm for 300 s in a private netns over
# 500 ports, while the daemon's RSS is sampled every 15 s and /metrics scraped; then the daemon's
# counts against the storm's own attempts and the netns OutRsts delta (in the storm's JSON line).
# Run from the workspace root after `cargo xtask bench --no-profile --rounds 1` or a release build
# of rstwatch and rstwatch-tests (target/release/storm).
set -u
NS=rstwsoak-$$
ip netns add $NS; ip -n $NS link set lo up
./target/release/rstwatch run --metrics-addr 127.0.0.1:19977 --max-ports 1000 > /tmp/soak-daemon.log 2>&1 &
D=$!
sleep 2
./target/release/storm --netns /run/netns/$NS --threads 1 --port 30000 --ports 500 --duration-ms 300000 --max-attempts 100000000 > /tmp/soak-storm.json 2>&1 &
S=$!
for i in $(seq 0 21); do
  echo "t=$((i*15))s rss_kib=$(awk '/VmRSS/{print $2}' /proc/$D/status) hwm_kib=$(awk '/VmHWM/{print $2}' /proc/$D/status)"
  curl -s 127.0.0.1:19977/metrics > /dev/null
  kill -0 $S 2>/dev/null || break
  sleep 15
done
wait $S
sleep 1
M=$(curl -s 127.0.0.1:19977/metrics)
ONPORTS='port="30[0-4][0-9][0-9]"'
SENT=$(echo "$M" | grep '^rstwatch_resets_total' | grep 'direction="sent"' | grep 'cause="no_listener"' | grep -E "$ONPORTS" | awk '{s+=$2} END{print s}')
RECV=$(echo "$M" | grep '^rstwatch_resets_total' | grep 'direction="received"' | grep 'cause="connection_refused"' | grep -E "$ONPORTS" | awk '{s+=$2} END{print s}')
echo "storm: $(cat /tmp/soak-storm.json | head -c 400)"
echo "sent/no_listener(ports 30000-30499)=$SENT received/connection_refused(ports 30000-30499)=$RECV"
echo "$M" | grep -E '^rstwatch_(events_lost_total|label_overflow_total)'
echo "final rss_kib=$(awk '/VmRSS/{print $2}' /proc/$D/status) hwm_kib=$(awk '/VmHWM/{print $2}' /proc/$D/status)"
kill $D; wait $D; echo "daemon exit $?"
ip netns del $NS

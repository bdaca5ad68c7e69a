#!/usr/bin/env bash
# Benchmark: hostd's native disk and network figures against the reference tools on the
# same file and the same loopback path. Prints each side's median and the ratio; the
# figures should agree within ±10 %.
#   scripts/compare-native.sh [REPS]      (default 5)
set -euo pipefail
reps=${1:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
agent=$("$root/scripts/build-agent")
cargo build -q --release -p hostd --manifest-path "$root/Cargo.toml"
hostd="$root/target/release/hostd"
for t in dd iperf3 jq; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done

work=$(mktemp -d /var/tmp/vb-compare.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
file="$work/data.bin"
dd if=/dev/urandom of="$file" bs=1M count=512 status=none conv=fsync

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

echo "# hostd native: $reps reps after 1 warm-up, agent $(sha256sum "$agent" | cut -c1-16)…"
"$hostd" bench --backend native --agent "$agent" --bench disk,net_stream --reps "$reps" \
  --disk-file "$file" --disk-block-kib 1024 --net-duration-ms 2000 --net-msg-size 131072 --json \
  > "$work/hostd.json" 2>/dev/null
vb_disk=$(jq '.results[] | select(.name=="disk") | .samples[]' "$work/hostd.json" | median)
vb_net=$(jq '.results[] | select(.name=="net_stream") | .samples[]' "$work/hostd.json" | median)

echo "# dd iflag=direct bs=1M on the same 512 MiB file: $reps runs after 1 warm-up"
dd if="$file" of=/dev/null bs=1M iflag=direct status=none
for _ in $(seq "$reps"); do
  dd if="$file" of=/dev/null bs=1M iflag=direct 2>&1 | awk '/copied/ {for(i=1;i<=NF;i++) if($i=="copied,") {print $1/$(i+1)/1e6}}'
done > "$work/dd.txt"
dd_disk=$(median < "$work/dd.txt")

echo "# iperf3 on 127.0.0.1, 2 s, 128 KiB writes: $reps runs"
port=$((20000 + RANDOM % 20000))
iperf3 -s -p "$port" >/dev/null 2>&1 &
sleep 0.5
for _ in $(seq "$reps"); do
  iperf3 -c 127.0.0.1 -p "$port" -t 2 -l 131072 -J | jq '.end.sum_received.bits_per_second / 8 / 1e6'
done > "$work/iperf.txt"
ip_net=$(median < "$work/iperf.txt")

printf '%-34s %12s %12s %8s\n' "figure (median, MB/s = 10^6 B/s)" hostd reference ratio
printf '%-34s %12.1f %12.1f %8.3f\n' "disk: O_DIRECT sequential read" "$vb_disk" "$dd_disk" "$(echo "$vb_disk / $dd_disk" | bc -l)"
printf '%-34s %12.1f %12.1f %8.3f\n' "network: TCP stream on loopback" "$vb_net" "$ip_net" "$(echo "$vb_net / $ip_net" | bc -l)"

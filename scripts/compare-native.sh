#!/usr/bin/env bash
# Benchmark: hostd's native disk and network figures against the reference tools on the
# same file and the same loopback path. Rounds alternate hostd / reference so that the
# machine's drift hits both alike; prints each side's median and the median of the per-round
# ratios (hostd ÷ reference), which should be within ±10 % of 1.
#   scripts/compare-native.sh [ROUNDS]      (default 7)
set -euo pipefail
rounds=${1:-7}
root=$(cd "$(dirname "$0")/.." && pwd)
agent=$("$root/scripts/build-agent")
cargo build -q --release -p hostd --manifest-path "$root/Cargo.toml"
hostd="$root/target/release/hostd"
for t in dd iperf3 jq; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done

work=$(mktemp -d /var/tmp/vb-compare.XXXXXX)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
file="$work/data.bin"
dd if=/dev/urandom of="$file" bs=1M count=512 status=none conv=fsync
port=$((20000 + RANDOM % 20000))
iperf3 -s -p "$port" >/dev/null 2>&1 &
sleep 0.5

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
echo "# $rounds rounds, each: hostd bench (1 warm-up + 1 run) then dd iflag=direct bs=1M (512 MiB) and iperf3 (2 s, 128 KiB writes)"
echo "# agent sha256 $(sha256sum "$agent" | cut -d' ' -f1)"
for i in $(seq "$rounds"); do
  "$hostd" bench --backend native --agent "$agent" --bench disk,net_stream --reps 1 --warmup 1 \
    --disk-file "$file" --disk-block-kib 1024 --net-duration-ms 2000 --net-msg-size 131072 --json \
    > "$work/hostd.json" 2>/dev/null
  vd=$(jq '.results[] | select(.name=="disk") | .samples[0]' "$work/hostd.json")
  vn=$(jq '.results[] | select(.name=="net_stream") | .samples[0]' "$work/hostd.json")
  rd=$(dd if="$file" of=/dev/null bs=1M iflag=direct 2>&1 | awk '/copied/ {for(i=1;i<=NF;i++) if($i=="copied,") {print $1/$(i+1)/1e6}}')
  rn=$(iperf3 -c 127.0.0.1 -p "$port" -t 2 -l 131072 -J | jq '.end.sum_received.bits_per_second / 8 / 1e6')
  echo "$vd $rd $vn $rn" >> "$work/rounds.txt"
  printf '  round %d: disk %.0f vs %.0f MB/s, network %.0f vs %.0f MB/s\n' "$i" "$vd" "$rd" "$vn" "$rn"
done
col() { awk -v c="$1" '{print $c}' "$work/rounds.txt" | median; }
ratio() { awk -v a="$1" -v b="$2" '{print $a/$b}' "$work/rounds.txt" | median; }
printf '%-34s %12s %12s %14s\n' "figure (median, MB/s = 10^6 B/s)" hostd reference "median ratio"
printf '%-34s %12.1f %12.1f %14.3f\n' "disk: O_DIRECT sequential read" "$(col 1)" "$(col 2)" "$(ratio 1 2)"
printf '%-34s %12.1f %12.1f %14.3f\n' "network: TCP stream on loopback" "$(col 3)" "$(col 4)" "$(ratio 3 4)"

#!/usr/bin/env bash
# Benchmark: image trees on a 2 GiB VM-like image, against b3sum and veritysetup in the same run.
#   scripts/bench-trees.sh [SIZE_MIB] [RUNS]     (defaults 2048, 5)
# Prints a table and writes target/bench/trees.json. Every tool reads a warm page cache; the
# best of RUNS is reported for each, and the ratios compare those bests.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
MIB=${1:-2048}
RUNS=${2:-5}
VM=$(build_release)
mkdir -p "$CACHE/bench" "$ROOT/target/bench"
IMG=$CACHE/bench/vm-$MIB.img
[ -s "$IMG" ] || python3 "$ROOT/scripts/mkimage.py" "$IMG" "$MIB"
HASH=$(mktemp)
trap 'rm -f "$HASH"' EXIT
cat "$IMG" > /dev/null

best() { # best wall time in seconds of RUNS runs of a command
  local b=999999 t0 t1 t
  for _ in $(seq "$RUNS"); do
    t0=$(date +%s.%N); "$@" > /dev/null 2>&1 || { echo "benchmark command failed: $*" >&2; exit 1; }; t1=$(date +%s.%N)
    t=$(echo "$t1 - $t0" | bc -l)
    b=$(echo "if ($t < $b) $t else $b" | bc -l)
  done
  echo "$b"
}

threads=$(nproc)
t_b3sum=$(best b3sum --num-threads "$threads" "$IMG")
t_b3=$(best "$VM" measure --alg blake3 "$IMG")
t_vs=$(best veritysetup format --hash sha256 --salt - --data-block-size 4096 --hash-block-size 4096 "$IMG" "$HASH")
t_s256=$(best "$VM" measure --alg sha256 "$IMG")
t_s384=$(best "$VM" measure --alg sha384 "$IMG")
gbs() { echo "scale=2; $MIB / 1024 / $1" | bc -l; }
ratio() { echo "scale=2; $1 / $2" | bc -l; }

printf '%-34s %8s %8s\n' "image $MIB MiB, $threads threads" "seconds" "GB/s"
printf '%-34s %8.3f %8s\n' "b3sum" "$t_b3sum" "$(gbs "$t_b3sum")"
printf '%-34s %8.3f %8s\n' "vmattest blake3 tree" "$t_b3" "$(gbs "$t_b3")"
printf '%-34s %8.3f %8s\n' "veritysetup format sha256" "$t_vs" "$(gbs "$t_vs")"
printf '%-34s %8.3f %8s\n' "vmattest sha256 tree" "$t_s256" "$(gbs "$t_s256")"
printf '%-34s %8.3f %8s\n' "vmattest sha384 tree" "$t_s384" "$(gbs "$t_s384")"
r_b3=$(ratio "$t_b3sum" "$t_b3")
r_sha=$(ratio "$t_vs" "$t_s256")
echo "blake3 tree throughput / b3sum:          ${r_b3}x   (target >= 0.6x)"
echo "sha256 tree throughput / veritysetup:    ${r_sha}x   (target >= 2.5x)"
cat > "$ROOT/target/bench/trees.json" <<JSON
{"image_mib": $MIB, "threads": $threads, "runs": $RUNS,
 "seconds": {"b3sum": $t_b3sum, "blake3_tree": $t_b3, "veritysetup_sha256": $t_vs, "sha256_tree": $t_s256, "sha384_tree": $t_s384},
 "ratio_blake3_vs_b3sum": $r_b3, "ratio_sha256_vs_veritysetup": $r_sha}
JSON

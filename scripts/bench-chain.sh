#!/usr/bin/env bash
# Benchmark: snapshot chains on a 2 GiB VM-like image, against xdelta3, zstd and cp in the same run.
#   scripts/bench-chain.sh [SIZE_MIB] [DELTAS]     (defaults 2048, 100)
# 1. Delta take: 2% of the pages of a copy of the image are mutated (scripts/mutate.py); the
#    delta `snapshot take` of the copy is timed against `xdelta3 -e -s ORIG COPY` (default
#    options) and `zstd -3 -T0` of the whole copy. Each take run re-creates the store and takes
#    the baseline untimed. The delta's size is the bytes of the new files under objects/ and
#    links/ (page batches + manifest + signed link); `stored_bytes` (batches only) is shown too.
# 2. Restore: a chain of a baseline and DELTAS deltas (each after mutating 2% of the pages with
#    another seed) is built untimed; `snapshot restore --seq DELTAS` is timed against `cp` of the
#    full image, and the restored image must be byte-identical to the final mutated image.
#    The chain considers every ANCHOR-th link (default 16) for an anchor; a second chain of the
#    same images without anchors is built beside it, and the seq furthest after an anchor is
#    restored from both (plus seq DELTAS-1 and seq 0), each against cp. WORKING_SET=P (percent,
#    default 100) draws each delta's pages from the same P% of the image, as a guest keeps
#    rewriting its working set.
# 3. Retention: `snapshot prune --keep KEEP` (default 10) folds the chain's older seqs under a
#    rebase (once: it changes the store), against a restore of the new first seq plus a
#    baseline take of it, the work it repeats; then a seq that is not the head is restored again
#    (now replayed from the rebase) and the head must still be byte-identical.
# Every tool reads a warm page cache; neither restore nor cp fsyncs the image it writes. The best
# of RUNS runs (default 5) is reported for each (each run starts after a `sync`; head restores
# and cp alternate, so both meet the same phases of the machine's load), and the ratios compare
# those bests. Prints a table and writes target/bench/chain.json.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
MIB=${1:-2048}
DELTAS=${2:-100}
RUNS=${RUNS:-5}
KEEP=${KEEP:-10}
ANCHOR=${ANCHOR:-16}
WORKING_SET=${WORKING_SET:-100}
PERCENT=2
[ "$DELTAS" -ge 1 ] || { echo "DELTAS must be at least 1" >&2; exit 2; }
for tool in xdelta3 zstd bc cmp python3; do
  command -v "$tool" >/dev/null || { echo "bench-chain: $tool not found; install it with scripts/install-deps.sh" >&2; exit 2; }
done
VM=$(build_release)
mkdir -p "$CACHE/bench" "$ROOT/target/bench"
IMG=$CACHE/bench/vm-$MIB.img
[ -s "$IMG" ] || python3 "$ROOT/scripts/mkimage.py" "$IMG" "$MIB"
WORK=$(mktemp -d "$CACHE/bench/chain.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
MUT=$WORK/mutated.img
STORE=$WORK/store
"$VM" keygen --alg ed25519 --out "$WORK/key" > /dev/null

now() { date +%s.%N; }
sub() { printf '%.6f' "$(echo "$1 - $2" | bc -l)"; }
# Best wall time in seconds of RUNS runs of a command. PRE and POST are shell snippets run
# untimed before and after each run; every run starts after a `sync`, so no writeback of an
# earlier step's files competes with it. The last run's stdout is kept in $WORK/last.out.
best() {
  local pre=$1 post=$2 b=999999 t0 t1 t
  shift 2
  for _ in $(seq "$RUNS"); do
    eval "$pre"
    sync
    t0=$(now)
    "$@" > "$WORK/last.out" 2> "$WORK/last.err" || { echo "benchmark command failed: $*" >&2; cat "$WORK/last.err" >&2; exit 1; }
    t1=$(now)
    eval "$post"
    t=$(sub "$t1" "$t0")
    b=$(echo "if ($t < $b) $t else $b" | bc -l)
  done
  printf '%.6f\n' "$b"
}
store_bytes() { # apparent bytes of everything a chain keeps: objects/ and links/ (not the head cache)
  find "$1/objects" "$1/links" -type f -printf '%s\n' | awk '{s += $1} END {printf "%.0f\n", s}'
}
json_field() { python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$@"; }
new_store() { # a fresh store holding the baseline of the original image; $1: init options
  rm -rf "$STORE"
  "$VM" snapshot init --store "$STORE" --vm-id bench ${1:-} > /dev/null
  "$VM" snapshot take --store "$STORE" --key "$WORK/key" --memory "$IMG" --json > "$WORK/base.json"
}

# --- 1. one delta: vmattest take vs xdelta3 vs zstd -------------------------------------------
cp "$IMG" "$MUT"
python3 "$ROOT/scripts/mutate.py" "$MUT" 1 "$PERCENT" 2> /dev/null
cat "$IMG" "$MUT" > /dev/null
t_take=$(best 'new_store; store_bytes "$STORE" > "$WORK/base.bytes"' ':' \
  "$VM" snapshot take --store "$STORE" --key "$WORK/key" --memory "$MUT" --json)
cp "$WORK/last.out" "$WORK/take.json"
changed=$(json_field "$WORK/take.json" changed_pages)
total_pages=$(json_field "$WORK/take.json" total_pages)
batch_bytes=$(json_field "$WORK/take.json" stored_bytes)
delta_bytes=$(( $(store_bytes "$STORE") - $(cat "$WORK/base.bytes") ))
base_bytes=$(json_field "$WORK/base.json" stored_bytes)
rm -rf "$STORE"
t_xd=$(best 'rm -f "$WORK/x.vcdiff"' ':' xdelta3 -e -s "$IMG" "$MUT" "$WORK/x.vcdiff")
xd_bytes=$(stat -c %s "$WORK/x.vcdiff")
rm -f "$WORK/x.vcdiff"
t_zstd=$(best 'rm -f "$WORK/m.zst"' ':' zstd -3 -T0 -q "$MUT" -o "$WORK/m.zst")
zstd_bytes=$(stat -c %s "$WORK/m.zst")
rm -f "$WORK/m.zst"

# --- 1b. a baseline take, with and without the head cache, vs zstd -3 -T0 of the same image ----
base_take() { # $1: extra `snapshot init` option
  best "rm -rf \"\$STORE\"; \"\$VM\" snapshot init --store \"\$STORE\" --vm-id bench $1 > /dev/null" ':' \
    "$VM" snapshot take --store "$STORE" --key "$WORK/key" --memory "$IMG" --json
}
t_base_on=$(base_take "")
t_base_off=$(base_take --no-head-cache)
rm -rf "$STORE"
t_zstd_img=$(best 'rm -f "$WORK/i.zst"' ':' zstd -3 -T0 -q "$IMG" -o "$WORK/i.zst")
rm -f "$WORK/i.zst"

# --- 2. a DELTAS-delta chain: restore at seq DELTAS vs cp ---------------------------------------
cp "$IMG" "$MUT"
PLAIN=$WORK/plain
rm -rf "$PLAIN"
"$VM" snapshot init --store "$PLAIN" --vm-id bench --anchor-every 0 > /dev/null
"$VM" snapshot take --store "$PLAIN" --key "$WORK/key" --memory "$IMG" --json > /dev/null
t0=$(now)
new_store "--anchor-every $ANCHOR"
t_mutate=0
t_plain=0
for seq in $(seq "$DELTAS"); do
  m0=$(now)
  python3 "$ROOT/scripts/mutate.py" "$MUT" "$seq" "$PERCENT" "$WORKING_SET" 2> /dev/null
  t_mutate=$(printf '%.6f' "$(echo "$t_mutate + $(sub "$(now)" "$m0")" | bc -l)")
  "$VM" snapshot take --store "$STORE" --key "$WORK/key" --memory "$MUT" --json > /dev/null
  p0=$(now)
  "$VM" snapshot take --store "$PLAIN" --key "$WORK/key" --memory "$MUT" --json > /dev/null
  t_plain=$(printf '%.6f' "$(echo "$t_plain + $(sub "$(now)" "$p0")" | bc -l)")
done
t_build=$(sub "$(sub "$(now)" "$t0")" "$t_plain")
chain_bytes=$(store_bytes "$STORE")
plain_bytes=$(store_bytes "$PLAIN")
anchors=$("$VM" snapshot log --store "$STORE" --json | python3 -c 'import json, sys; print(sum(1 for l in sys.stdin if json.loads(l).get("anchor")))')
# The seq with the most links after its anchor.
if [ "$ANCHOR" -gt 1 ] && [ "$DELTAS" -ge "$ANCHOR" ]; then
  WORST=$(( (DELTAS / ANCHOR) * ANCHOR - 1 ))
else
  WORST=$((DELTAS - 1))
fi
OUT=$WORK/restored
cat "$MUT" > /dev/null
"$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq "$DELTAS" --out "$OUT" --json > /dev/null
cmp "$OUT/memory" "$MUT" || { echo "bench-chain: the image restored at seq $DELTAS differs from the final mutated image" >&2; exit 1; }
rm -rf "$OUT"
min() { printf '%.6f' "$(echo "if ($1 < $2) $1 else $2" | bc -l)"; }
t_restore=999999
t_cp=999999
for _ in $(seq "$RUNS"); do
  t_restore=$(min "$t_restore" "$(RUNS=1 best 'rm -rf "$OUT"' 'rm -rf "$OUT"' \
    "$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq "$DELTAS" --out "$OUT" --json)")
  t_cp=$(min "$t_cp" "$(RUNS=1 best 'rm -f "$WORK/copy.img"' 'rm -f "$WORK/copy.img"' cp "$MUT" "$WORK/copy.img")")
done
t_restore0=$(best 'rm -rf "$OUT"' 'rm -rf "$OUT"' \
  "$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq 0 --out "$OUT" --json)
# Not the head: decoded from the chain, without the head cache.
t_restore_mid=$(best 'rm -rf "$OUT"' 'rm -rf "$OUT"' \
  "$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq $((DELTAS - 1)) --out "$OUT" --json)
t_restore_worst=$(best 'rm -rf "$OUT"' 'rm -rf "$OUT"' \
  "$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq "$WORST" --out "$OUT" --json)
t_restore_worst_plain=$(best 'rm -rf "$OUT"' 'rm -rf "$OUT"' \
  "$VM" snapshot restore --store "$PLAIN" --pubkey "$WORK/key.pub" --seq "$WORST" --out "$OUT" --json)
"$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq "$WORST" --out "$OUT" --json > /dev/null
"$VM" snapshot restore --store "$PLAIN" --pubkey "$WORK/key.pub" --seq "$WORST" --out "$WORK/plain-out" --json > /dev/null
cmp "$OUT/memory" "$WORK/plain-out/memory" || { echo "bench-chain: seq $WORST restores differently with and without anchors" >&2; exit 1; }
rm -rf "$OUT" "$WORK/plain-out" "$PLAIN"

# --- 3. retention: fold all but the newest KEEP seqs ---------------------------------------------
sync
t0=$(now)
"$VM" snapshot prune --store "$STORE" --pubkey "$WORK/key.pub" --key "$WORK/key" --keep "$KEEP" \
  --json > "$WORK/prune.json"
t_prune=$(sub "$(now)" "$t0")
pruned_bytes=$(store_bytes "$STORE")
t_restore_mid_pruned=$(best 'rm -rf "$OUT"' 'rm -rf "$OUT"' \
  "$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq $((DELTAS - 1)) --out "$OUT" --json)
"$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq "$DELTAS" --out "$OUT" --json > /dev/null
cmp "$OUT/memory" "$MUT" || { echo "bench-chain: after the prune, seq $DELTAS differs from the final mutated image" >&2; exit 1; }
rm -rf "$OUT"
# The peer of a prune: restoring the new first seq, then a baseline take of it.
t_peer_restore=$(best 'rm -rf "$OUT"' ':' \
  "$VM" snapshot restore --store "$STORE" --pubkey "$WORK/key.pub" --seq $((DELTAS - KEEP + 1)) --out "$OUT" --json)
t_peer_take=$(best 'rm -rf "$WORK/peer"; "$VM" snapshot init --store "$WORK/peer" --vm-id bench > /dev/null' ':' \
  "$VM" snapshot take --store "$WORK/peer" --key "$WORK/key" --memory "$OUT/memory" --json)
rm -rf "$OUT" "$WORK/peer"

# --- 4. report ----------------------------------------------------------------------------------
num() { printf "%.${2:-2}f" "$(echo "$1" | bc -l)"; } # always a valid JSON number
ratio() { num "$1 / $2" "${3:-2}"; }
gbs() { num "$MIB / 1024 / $1"; }
mib() { num "$1 / 1048576"; }
verdict() { if [ "$(echo "$1" | bc -l)" -eq 1 ]; then echo met; else echo MISSED; fi; }
threads=$(nproc)
r_speed=$(ratio "$t_xd" "$t_take")
r_size=$(ratio "$delta_bytes" "$xd_bytes" 3)
r_zstd_speed=$(ratio "$t_zstd" "$t_take")
r_zstd_size=$(ratio "$delta_bytes" "$zstd_bytes" 4)
r_restore=$(ratio "$t_restore" "$t_cp")
per_take=$(num "$t_build / ($DELTAS + 1)" 3)

echo "image $MIB MiB ($total_pages pages), $threads threads, $PERCENT% of pages mutated per delta ($changed changed; chain: from a working set of $WORKING_SET%), best of $RUNS"
printf '%-44s %9s %8s %12s\n' "" "seconds" "GB/s" "MiB"
printf '%-44s %9.3f %8s %12s\n' "vmattest snapshot take (delta)" "$t_take" "$(gbs "$t_take")" "$(mib "$delta_bytes")"
printf '%-44s %9s %8s %12s\n' "  of which page batches (stored_bytes)" "" "" "$(mib "$batch_bytes")"
printf '%-44s %9.3f %8s %12s\n' "xdelta3 -e -s (default options)" "$t_xd" "$(gbs "$t_xd")" "$(mib "$xd_bytes")"
printf '%-44s %9.3f %8s %12s\n' "zstd -3 -T0 (full image)" "$t_zstd" "$(gbs "$t_zstd")" "$(mib "$zstd_bytes")"
printf '%-44s %9.3f %8s\n' "baseline take, head cache on" "$t_base_on" "$(gbs "$t_base_on")"
printf '%-44s %9.3f %8s\n' "baseline take, --no-head-cache" "$t_base_off" "$(gbs "$t_base_off")"
printf '%-44s %9.3f %8s\n' "zstd -3 -T0 (the baseline's image)" "$t_zstd_img" "$(gbs "$t_zstd_img")"
printf '%-44s %9.3f %8s %12s\n' "chain build: baseline + $DELTAS deltas (once)" "$t_build" "" "$(mib "$chain_bytes")"
printf '%-44s %9.3f\n' "  of which mutate.py" "$t_mutate"
printf '%-44s %9.3f %8s %12s\n' "  baseline take alone (stored_bytes)" "$(json_field "$WORK/base.json" seconds)" "" "$(mib "$base_bytes")"
printf '%-44s %9.3f %8s\n' "vmattest snapshot restore --seq $DELTAS" "$t_restore" "$(gbs "$t_restore")"
printf '%-44s %9.3f %8s\n' "  restore --seq $((DELTAS - 1)) (not the head: decoded)" "$t_restore_mid" "$(gbs "$t_restore_mid")"
printf '%-44s %9.3f %8s\n' "  restore --seq 0 (baseline only)" "$t_restore0" "$(gbs "$t_restore0")"
printf '%-44s %9.3f %8s %12s\n' "  restore --seq $WORST (most links after an anchor)" "$t_restore_worst" "$(gbs "$t_restore_worst")" ""
printf '%-44s %9.3f %8s %12s\n' "  restore --seq $WORST, chain without anchors" "$t_restore_worst_plain" "$(gbs "$t_restore_worst_plain")" "$(mib "$plain_bytes")"
printf '%-44s %9.3f %8s\n' "cp (full image)" "$t_cp" "$(gbs "$t_cp")"
line() { printf '%-34s %-8s %-18s %s\n' "$@" | sed 's/ *$//'; }
line "take speed / xdelta3:" "${r_speed}x" "(target >= 10x)" "$(verdict "$r_speed >= 10")"
line "delta size / xdelta3 size:" "$r_size" "(target <= 1.05)" "$(verdict "$r_size <= 1.05")"
line "take speed / zstd:" "${r_zstd_speed}x"
line "delta size / zstd size:" "$r_zstd_size"
line "baseline take / zstd, cache on:" "$(ratio "$t_base_on" "$t_zstd_img")x" "(target <= 1.2x)" "$(verdict "$t_base_on <= 1.2 * $t_zstd_img")"
line "baseline take / zstd, cache off:" "$(ratio "$t_base_off" "$t_zstd_img")x" "(target <= 1.2x)" "$(verdict "$t_base_off <= 1.2 * $t_zstd_img")"
line "restore seq $DELTAS time / cp time:" "${r_restore}x" "(target <= 2x)" "$(verdict "$r_restore <= 2")"
line "restore seq $((DELTAS - 1)) time / cp time:" "$(ratio "$t_restore_mid" "$t_cp")x" "(decoded from the chain)"
line "restore seq $WORST time / cp time:" "$(ratio "$t_restore_worst" "$t_cp")x" "(target <= 1.5x)" "$(verdict "$t_restore_worst <= 1.5 * $t_cp")"
line "  without anchors / cp time:" "$(ratio "$t_restore_worst_plain" "$t_cp")x"
line "chain with / without anchors:" "$(ratio "$chain_bytes" "$plain_bytes" 3)" "(store bytes; $anchors anchors)"
t_peer=$(num "$t_peer_restore + $t_peer_take" 6)
printf '%-44s %9.3f %8s %12s\n' "snapshot prune --keep $KEEP (once)" "$t_prune" "" "$(mib "$pruned_bytes")"
printf '%-44s %9.3f\n' "  peer: restore new first seq + baseline take" "$t_peer"
printf '%-44s %9.3f %8s\n' "  restore --seq $((DELTAS - 1)) after the prune" "$t_restore_mid_pruned" "$(gbs "$t_restore_mid_pruned")"
line "prune time / peer time:" "$(ratio "$t_prune" "$t_peer")x"
line "store after / before the prune:" "$(ratio "$pruned_bytes" "$chain_bytes" 3)"
line "restore seq $((DELTAS - 1)) after / before:" "$(ratio "$t_restore_mid_pruned" "$t_restore_mid")"
echo "restored image at seq $DELTAS: byte-identical to the final mutated image"
cat > "$ROOT/target/bench/chain.json" <<JSON
{"image_mib": $MIB, "total_pages": $total_pages, "threads": $threads, "runs": $RUNS, "deltas": $DELTAS,
 "mutate_percent": $PERCENT, "changed_pages": $changed,
 "seconds": {"take_delta": $t_take, "xdelta3": $t_xd, "zstd_3": $t_zstd, "restore": $t_restore, "restore_seq0": $t_restore0, "restore_not_head": $t_restore_mid, "cp": $t_cp,
             "restore_worst_after_anchor": $t_restore_worst, "restore_worst_without_anchors": $t_restore_worst_plain,
             "baseline_take": $(json_field "$WORK/base.json" seconds), "baseline_take_cache_on": $t_base_on, "baseline_take_cache_off": $t_base_off, "zstd_3_baseline_image": $t_zstd_img, "chain_build": $t_build, "chain_build_mutate": $t_mutate, "chain_build_per_take": $per_take,
             "prune": $t_prune, "prune_peer": $t_peer, "restore_not_head_after_prune": $t_restore_mid_pruned},
 "bytes": {"delta": $delta_bytes, "delta_batches": $batch_bytes, "xdelta3": $xd_bytes, "zstd_3": $zstd_bytes,
           "baseline_batches": $base_bytes, "chain": $chain_bytes, "chain_without_anchors": $plain_bytes, "chain_after_prune": $pruned_bytes},
 "anchor_every": $ANCHOR, "worst_seq": $WORST, "working_set_percent": $WORKING_SET,
 "anchors": $anchors,
 "keep": $KEEP,
 "ratio_take_speed_vs_xdelta3": $r_speed, "ratio_delta_size_vs_xdelta3": $r_size,
 "ratio_take_speed_vs_zstd": $r_zstd_speed, "ratio_delta_size_vs_zstd": $r_zstd_size,
 "ratio_restore_vs_cp": $r_restore, "restore_identical": true}
JSON

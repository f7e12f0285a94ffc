#!/usr/bin/env bash
# Makes the qcow2 fixtures in tests/testdata/qcow2/ with qemu-img and qemu-io
# 7.2, and records what QEMU says about each (tests/_helpers/fixture_record.ts
# runs qemu-img convert/map/info/check on them and writes manifest.json).
# The tests read these fixtures and the recorded answers when QEMU is not
# installed; tests/drivers/qcow2/fixtures_test.ts checks, where it is, that
# the committed answers are still what qemu-img says.
#
#   tests/testdata/make.sh            # rewrite tests/testdata/qcow2/
#   tests/testdata/make.sh /tmp/out   # write elsewhere (the fixtures test compares)
#
# Every image is made here by the commands below, nothing else; damaged images
# are patched with tests/_helpers/fixture_patch.ts (one named field each).
# Names are relative (backing files, data files) so a test can unpack a
# fixture with its companions into any directory. Images are stored gzipped.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$HERE/qcow2}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
qemu-img --version | head -1 | grep -q 'version 7\.2\.' || {
  echo "make.sh: the fixtures are made with qemu-img 7.2 (found: $(qemu-img --version | head -1))" >&2
  exit 1
}
W=$(mktemp -d "${TMPDIR:-/tmp}/blkgraph-fixtures-XXXXXX")
trap 'rm -rf "$W"' EXIT
cd "$W"
PLAN=$W/plan.tsv
: >"$PLAN"

new() { qemu-img create -q -f qcow2 "$@"; }                      # new [-o OPTS] [-b B -F F] NAME SIZE
io() { local i=$1 a=(); shift; for c in "$@"; do a+=(-c "$c"); done; qemu-io -f qcow2 "${a[@]}" "$i" >/dev/null; }
patch() { deno run -q --allow-read --allow-write "$ROOT/tests/_helpers/fixture_patch.ts" "$@"; }
# fixture NAME.qcow2 'what it holds' [FILES...]: keep NAME.qcow2 (and the files it needs) and record QEMU's answers
fixture() { printf 'fixture\t%s\t%s\t%s\n' "$1" "$2" "${*:3}" >>"$PLAN"; }
# runs NAME.qcow2 'LINE' ...: also record a command line on a fresh copy: `qemu-img ARGS` (or `qemu-io ARGS`),
# several joined by ' && '; @IMG@ is the image, @DIR@ its directory, 'quoted words' may hold spaces
# (stdout, stderr, exit code, the image's sha256 afterwards)
runs() { local n=$1; shift; for r in "$@"; do printf 'run\t%s\t%s\n' "$n" "$r" >>"$PLAN"; done; }
# repairs NAME.qcow2: also record `qemu-img check -r leaks|all [--output=json]` (output, exit code, the repaired file's hash)
repairs() { printf 'repair\t%s\n' "$1" >>"$PLAN"; }
# created 'OPTS' SIZE: record the sha256 of what `qemu-img create -f qcow2 -o OPTS x SIZE` writes (no image kept)
created() {
  rm -f c.qcow2
  if [ -n "$1" ]; then new -o "$1" c.qcow2 "$2"; else new c.qcow2 "$2"; fi
  printf 'create\t%s\t%s\t%s\t%s\n' "$1" "$2" "$(sha256sum c.qcow2 | cut -d' ' -f1)" "$(stat -c %s c.qcow2)" >>"$PLAN"
  rm -f c.qcow2
}
# damaged BASE.qcow2 SEED: record QEMU's check/repair answers on BASE damaged by seed (no image kept)
damaged() { patch damage "$1" "$2" "d-$2.qcow2"; printf 'damaged\t%s\t%s\td-%s.qcow2\n' "$1" "$2" "$2" >>"$PLAN"; }

# --- read_test: the same writes on every cluster size --------------------------
pattern() { # pattern NAME CLUSTER_SIZE: the writes of read_test's PATTERN_CMDS
  io "$1" "write -P 0x11 0 100k" "write -P 0x22 $(($2 * 3 + 100)) 5000" "write -P 0x33 $((2 * 1024 * 1024 - 700)) 1400" \
    "write -z $((4 * $2)) $2"
}
for cs in 512 4096 65536; do
  new -o cluster_size=$cs cs$cs.qcow2 4M
  pattern cs$cs.qcow2 $cs
  fixture cs$cs.qcow2 "4 MiB, $cs-byte clusters: data at 0 (100k of 0x11), 3cs+100 (5000 of 0x22), 2M-700 (1400 of 0x33, across a cluster boundary), a zero cluster at 4cs"
done
new -o cluster_size=2M cs2M.qcow2 16M
pattern cs2M.qcow2 $((2 * 1024 * 1024))
fixture cs2M.qcow2 "16 MiB, 2 MiB clusters, the same writes as cs512 scaled to the cluster size"
for o in compat=0.10 refcount_bits=1 refcount_bits=64 extended_l2=on lazy_refcounts=on; do
  n=opt-${o//[=_.]/-}.qcow2
  new -o $o "$n" 4M
  pattern "$n" 65536
  io "$n" "write -P 0x44 70000 3000"
  fixture "$n" "4 MiB, $o, the cs65536 writes plus 3000 bytes of 0x44 at 70000"
done

# Compressed clusters (zlib and zstd), made by qemu-img convert -c from a plain image.
new src.qcow2 4M
io src.qcow2 "write -P 0x41 0 1M" "write -P 0x42 3M 100k"
for t in zlib zstd; do
  qemu-img convert -c -O qcow2 -o compression_type=$t,cluster_size=4k src.qcow2 $t.qcow2
  fixture $t.qcow2 "4 MiB, 4k clusters, every cluster $t-compressed by qemu-img convert -c: 1M of 0x41 at 0, 100k of 0x42 at 3M"
done

# Backing chains (relative names).
new base55.qcow2 4M
io base55.qcow2 "write -P 0x55 0 4M"
fixture base55.qcow2 "4 MiB of 0x55"
new -b base55.qcow2 -F qcow2 zero-top.qcow2 4M
io zero-top.qcow2 "write -z 64k 128k"
fixture zero-top.qcow2 "over base55: zero clusters at 64k-192k that hide the backing data" base55.qcow2
new base66.qcow2 4M
io base66.qcow2 "write -P 0x66 0 4M"
new -b base66.qcow2 -F qcow2 discard-top.qcow2 4M
io discard-top.qcow2 "write -P 0x77 0 1M" "discard 64k 256k"
fixture discard-top.qcow2 "over base66 (4 MiB of 0x66): 1M of 0x77 at 0, then 64k-320k discarded" base66.qcow2
new chain0.qcow2 4M
io chain0.qcow2 "write -P 0x10 0 4M"
new -b chain0.qcow2 -F qcow2 chain1.qcow2 4M
io chain1.qcow2 "write -P 0x11 1M 1M"
new -b chain1.qcow2 -F qcow2 chain2.qcow2 4M
io chain2.qcow2 "write -P 0x12 1536k 64k"
new -b chain2.qcow2 -F qcow2 chain3.qcow2 4M
io chain3.qcow2 "write -P 0x13 0 4k"
fixture chain3.qcow2 "a chain of depth 3: chain0 4M of 0x10, chain1 1M of 0x11 at 1M, chain2 64k of 0x12 at 1536k, chain3 4k of 0x13 at 0" \
  chain2.qcow2 chain1.qcow2 chain0.qcow2
new base21.qcow2 1M
io base21.qcow2 "write -P 0x21 0 1M"
new -b base21.qcow2 -F qcow2 short-top.qcow2 4M
fixture short-top.qcow2 "4 MiB over a 1 MiB backing file (1M of 0x21): zeros past its end" base21.qcow2
new base-map.qcow2 2M
io base-map.qcow2 "write -P 1 0 512k" "write -z 1M 128k"
new -b base-map.qcow2 -F qcow2 map-top.qcow2 2M
io map-top.qcow2 "write -P 2 256k 128k" "write -z 448k 64k" "discard 0 64k"
fixture map-top.qcow2 "over base-map (512k of 1 at 0, zeros at 1M-1152k): data at 256k, zeros at 448k, a discarded cluster at 0" base-map.qcow2

# External data file.
new -o data_file=datafile.data,extended_l2=on datafile.qcow2 4M
io datafile.qcow2 "write -P 0x31 0 100k" "write -P 0x32 3M 5000"
fixture datafile.qcow2 "4 MiB with extended L2 and an external data file datafile.data: 100k of 0x31 at 0, 5000 of 0x32 at 3M" datafile.data
for raw in off on; do
  new -o data_file=data-$raw.data,data_file_raw=$raw datafile-raw-$raw.qcow2 64M
  io datafile-raw-$raw.qcow2 "write -P 1 0 1M" "write -P 2 30M 64k"
  fixture datafile-raw-$raw.qcow2 "64 MiB, data file data-$raw.data with data_file_raw=$raw: 1M of 1 at 0, 64k of 2 at 30M" data-$raw.data
done

# info: format-specific data of a few creation options.
new -o cluster_size=4k,refcount_bits=64,compression_type=zstd info-zstd.qcow2 1M
fixture info-zstd.qcow2 "empty 1 MiB: 4k clusters, 64-bit refcounts, zstd"
new -o compat=0.10 info-v2.qcow2 1M
fixture info-v2.qcow2 "empty 1 MiB, version 2"
new -o lazy_refcounts=on,extended_l2=on info-lazy-extl2.qcow2 1M
fixture info-lazy-extl2.qcow2 "empty 1 MiB, lazy refcounts and extended L2"

# --- check_*_test.ts: a busy image (data, a snapshot, overwritten data, a compressed cluster) ---
busy() { # busy NAME CLUSTER_SIZE [OPTS]
  new ${3:+-o "$3"} "$1" 64M
  io "$1" "write -P 1 0 1M" "write -P 2 10M 300k"
  qemu-img snapshot -c s1 "$1"
  io "$1" "write -P 3 512k 1M" "write -c -P 4 20M $2"
}
for cs in 512 4k 64k 2M; do
  busy busy-$cs.qcow2 $cs cluster_size=$cs
  fixture busy-$cs.qcow2 "64 MiB, $cs clusters: 1M of 1 at 0, 300k of 2 at 10M, snapshot s1, 1M of 3 at 512k, one compressed cluster of 4 at 20M"
done
busy busy-extl2.qcow2 64k extended_l2=on,cluster_size=64k
fixture busy-extl2.qcow2 "the busy-64k recipe with extended L2 entries"
busy busy-v2.qcow2 64k compat=0.10
fixture busy-v2.qcow2 "the busy-64k recipe on a version 2 image"
qemu-img convert -c -O qcow2 busy-64k.qcow2 busy-compressed.qcow2
fixture busy-compressed.qcow2 "busy-64k after qemu-img convert -c: every data cluster compressed (zlib)"
for bits in 1 2 4 8 32 64; do
  new -o refcount_bits=$bits,cluster_size=4k refcount$bits.qcow2 64M
  io refcount$bits.qcow2 "write -P 1 0 256k" "write -P 2 5M 64k"
  if [ $bits -gt 1 ]; then qemu-img snapshot -c s1 refcount$bits.qcow2; fi
  io refcount$bits.qcow2 "write -P 3 0 64k"
  fixture refcount$bits.qcow2 "64 MiB, 4k clusters, $bits-bit refcounts: 256k of 1 at 0, 64k of 2 at 5M$([ $bits -gt 1 ] && echo ', snapshot s1'), 64k of 3 at 0"
done
new bitmaps.qcow2 64M
qemu-img bitmap --add bitmaps.qcow2 b1
qemu-img bitmap --add -g 512k bitmaps.qcow2 b2
io bitmaps.qcow2 "write -P 1 0 4M"
fixture bitmaps.qcow2 "64 MiB, persistent bitmaps b1 and b2 (512k granularity), 4M of 1 at 0"
cp bitmaps.qcow2 bitmaps-cleared.qcow2
patch header-bit bitmaps-cleared.qcow2 88 0 clear
fixture bitmaps-cleared.qcow2 "bitmaps with autoclear bit 0 cleared (as a program without bitmap support leaves it): the bitmap clusters leak"
new -o lazy_refcounts=on dirty-killed.qcow2 64M
qemu-io -c "write -P 7 0 1M" -c "sigraise 9" dirty-killed.qcow2 >/dev/null 2>&1 || true
fixture dirty-killed.qcow2 "64 MiB, lazy refcounts, qemu-io killed (sigraise 9) after writing 1M of 7: dirty bit set, refcounts never written"
new -o lazy_refcounts=on,cluster_size=4k dirty-abort.qcow2 2M
qemu-io -c "write -P 0x41 0 512k" -c "abort" dirty-abort.qcow2 >/dev/null 2>&1 || true
fixture dirty-abort.qcow2 "2 MiB, 4k clusters, lazy refcounts, qemu-io aborted after writing 512k of 0x41: dirty, refcounts stale"

# Damaged images (one named field each) and their check / check -r answers.
cp busy-64k.qcow2 bad-leaks.qcow2
patch refcount16 bad-leaks.qcow2 0 2
patch refcount16 bad-leaks.qcow2 3 3
fixture bad-leaks.qcow2 "busy-64k with the refcounts of clusters 0 and 3 raised to 2 and 3: two leaks"
repairs bad-leaks.qcow2
cp busy-64k.qcow2 bad-leaks5.qcow2
patch refcount16 bad-leaks5.qcow2 0 2
patch refcount16 bad-leaks5.qcow2 3 5
fixture bad-leaks5.qcow2 "busy-64k with the refcounts of clusters 0 and 3 raised to 2 and 5"
repairs bad-leaks5.qcow2
cp busy-64k.qcow2 bad-lowref.qcow2
patch refcount16-data bad-lowref.qcow2 1
patch refcount16-l2 bad-lowref.qcow2 -1 0
fixture bad-lowref.qcow2 "busy-64k: the data cluster of L2 entry 0 (shared with s1) has refcount 1, the cluster before the first L2 table 0"
repairs bad-lowref.qcow2
new bad-copied.qcow2 64M
io bad-copied.qcow2 "write -P 1 0 128k"
patch l2-copy bad-copied.qcow2 0 1
fixture bad-copied.qcow2 "64 MiB, 128k of 1 at 0, L2 entry 1 a copy of entry 0 (both COPIED): refcount 1 reference 2, and a leak"
repairs bad-copied.qcow2
new bad-l2.qcow2 64M
io bad-l2.qcow2 "write -P 1 0 192k"
patch l2-set bad-l2.qcow2 0 0x8000000010000000
patch l2-set bad-l2.qcow2 1 0x8000000000050200
fixture bad-l2.qcow2 "64 MiB, 192k of 1 at 0, L2 entry 0 past the end of the file, entry 1 misaligned"
repairs bad-l2.qcow2
cp busy-64k.qcow2 bad-refblock.qcow2
patch reftable-add bad-refblock.qcow2 0 512
fixture bad-refblock.qcow2 "busy-64k with refcount table entry 0 moved 512 bytes: a misaligned refcount block"
repairs bad-refblock.qcow2
cp busy-64k.qcow2 bad-snap-l1-offset.qcow2
patch snaptable bad-snap-l1-offset.qcow2 0 0000000000400200
fixture bad-snap-l1-offset.qcow2 "busy-64k with the L1 table offset of snapshot s1 misaligned (0x400200)"
cp busy-64k.qcow2 bad-snap-l1-size.qcow2
patch snaptable bad-snap-l1-size.qcow2 8 10000000
fixture bad-snap-l1-size.qcow2 "busy-64k with the L1 table size of snapshot s1 huge (0x10000000)"
cp busy-64k.qcow2 bad-rebuild.qcow2
patch refcount16 bad-rebuild.qcow2 5 1
patch refcount16-l2 bad-rebuild.qcow2 0 0
patch refcount16 bad-rebuild.qcow2 2 3
fixture bad-rebuild.qcow2 "busy-64k: cluster 5 refcount 1, the first L2 table refcount 0, cluster 2 refcount 3 (needs a rebuild)"
repairs bad-rebuild.qcow2
cp busy-64k.qcow2 bad-zero-refcount.qcow2
patch refcount16 bad-zero-refcount.qcow2 5 0
fixture bad-zero-refcount.qcow2 "busy-64k with the refcount of cluster 5 zeroed: -r leaks cannot fix it"
repairs bad-zero-refcount.qcow2
cp busy-64k.qcow2 bad-human.qcow2
patch refcount16 bad-human.qcow2 3 2
fixture bad-human.qcow2 "busy-64k with the refcount of cluster 3 raised to 2: one leak"
cp bad-human.qcow2 bad-human2.qcow2
patch refcount16 bad-human2.qcow2 5 1
fixture bad-human2.qcow2 "bad-human with the refcount of cluster 5 lowered to 1 as well: a corruption and a leak"
repairs bad-human2.qcow2

# check_differential_test: four base images and the seeds it damages them with.
diffbase() { # diffbase NAME OPTS CLUSTER_SIZE
  new -o "$2" "$1" 32M
  qemu-io -c "write -P 1 0 1M" -c "write -P 2 8M 200k" "$1" >/dev/null
  qemu-img snapshot -c s1 "$1"
  qemu-io -c "write -P 3 256k 512k" -c "write -c -P 4 16M $3" "$1" >/dev/null
}
diffbase diff0.qcow2 cluster_size=64k 65536
diffbase diff1.qcow2 cluster_size=4k,refcount_bits=4 4096
diffbase diff2.qcow2 cluster_size=512,compat=0.10 512
diffbase diff3.qcow2 cluster_size=64k,refcount_bits=64,extended_l2=on 65536
for i in 0 1 2 3; do fixture diff$i.qcow2 "32 MiB base of check_differential_test variant $i: data, snapshot s1, overwrite, one compressed cluster"; done
for seed in $(seq 1 16); do damaged diff$((seed % 4)).qcow2 $((seed * 7919)); done

# --- write_test, events, concurrency, errpath 026: images to write to ----------
new -o cluster_size=512 w-512.qcow2 4M
new -o cluster_size=2M w-2M.qcow2 16M
new -o refcount_bits=1,cluster_size=4k w-refcount1.qcow2 8M
new -o refcount_bits=64,cluster_size=512 w-refcount64.qcow2 4M
new -o cluster_size=4k,data_file=w-datafile.data w-datafile.qcow2 8M
new -o extended_l2=on,cluster_size=16k w-extl2-16k.qcow2 8M
new -o refcount_bits=2,cluster_size=512 w-refcount2.qcow2 2M
new -o cluster_size=64k w-64k.qcow2 8M
new -o cluster_size=4k w-4k-1G.qcow2 1G
new -o cluster_size=4k w-4k-8M.qcow2 8M
new w-4M.qcow2 4M
new w-1M.qcow2 1M
new w-64M.qcow2 64M
new -o lazy_refcounts=on w-lazy.qcow2 1M
new -o cluster_size=4k w-4k-1M.qcow2 1M
for n in w-512 w-2M w-refcount1 w-refcount64 w-extl2-16k w-refcount2 w-64k w-4k-1G w-4k-8M w-4M w-1M w-64M w-lazy w-4k-1M; do
  fixture $n.qcow2 "empty, as qemu-img create -f qcow2 makes it (see make.sh for the options)"
done
fixture w-datafile.qcow2 "empty 8 MiB, 4k clusters, external data file w-datafile.data" w-datafile.data
new wbase8M.qcow2 8M
io wbase8M.qcow2 "write -P 0x77 0 7M"
new wbase3M.qcow2 $((3 * 1024 * 1024 + 4608))
io wbase3M.qcow2 "write -P 0x77 0 $((2 * 1024 * 1024 + 4608))"
fixture wbase8M.qcow2 "8 MiB, 7M of 0x77 at 0"
fixture wbase3M.qcow2 "3M+4608 bytes, 2M+4608 of 0x77 at 0"
new -o cluster_size=64k -b wbase3M.qcow2 -F qcow2 wb-64k-3M.qcow2 $((3 * 1024 * 1024 + 4608))
fixture wb-64k-3M.qcow2 "empty overlay over wbase3M, 64k clusters" wbase3M.qcow2
for o in cluster_size=4k cluster_size=64k compat=0.10,cluster_size=4k extended_l2=on,cluster_size=64k lazy_refcounts=on,cluster_size=4k \
  compat=0.10,cluster_size=64k; do
  n=wb-${o//[=_.,]/-}.qcow2
  new -o $o -b wbase8M.qcow2 -F qcow2 "$n" 8M
  fixture "$n" "empty 8 MiB overlay over wbase8M: $o" wbase8M.qcow2
done
for p in 42 11 5a; do
  new base$p-1M.qcow2 1M
  io base$p-1M.qcow2 "write -P 0x$p 0 1M"
  fixture base$p-1M.qcow2 "1 MiB of 0x$p"
done
new -o compat=0.10 -b base42-1M.qcow2 -F qcow2 ov42-v2.qcow2 1M
fixture ov42-v2.qcow2 "empty version 2 overlay over base42-1M" base42-1M.qcow2
new -o extended_l2=on,cluster_size=64k -b base42-1M.qcow2 -F qcow2 ov42-extl2.qcow2 1M
fixture ov42-extl2.qcow2 "empty extended-L2 overlay over base42-1M" base42-1M.qcow2
new -b base11-1M.qcow2 -F qcow2 ov11.qcow2 1M
fixture ov11.qcow2 "empty overlay over base11-1M" base11-1M.qcow2
cp ov11.qcow2 ov11-read.qcow2
io ov11-read.qcow2 "write -P 0x22 0 64k"
fixture ov11-read.qcow2 "ov11 with 64k of 0x22 at 0" base11-1M.qcow2
new -o cluster_size=64k -b base5a-1M.qcow2 -F qcow2 ov5a.qcow2 1M
fixture ov5a.qcow2 "empty overlay over base5a-1M" base5a-1M.qcow2
new -o cluster_size=4k snap4k.qcow2 4M
io snap4k.qcow2 "write -P 0x11 0 2M"
qemu-img snapshot -c s1 snap4k.qcow2
fixture snap4k.qcow2 "4 MiB, 4k clusters, 2M of 0x11 at 0 kept in snapshot s1"
new w-bitmap.qcow2 1M
qemu-img bitmap --add w-bitmap.qcow2 b0
fixture w-bitmap.qcow2 "empty 1 MiB with persistent bitmap b0 (autoclear bit 0 set)"
for compat in 1.1 0.10; do
  new -o compat=$compat grow-base-$compat.qcow2 2M
  io grow-base-$compat.qcow2 "write -P 0x77 0 2M"
  new -o compat=$compat -b grow-base-$compat.qcow2 -F qcow2 grow-$compat.qcow2 1M
  fixture grow-$compat.qcow2 "1 MiB compat=$compat overlay over a 2 MiB backing file of 0x77" grow-base-$compat.qcow2
  cp grow-$compat.qcow2 grown-$compat.qcow2
  if qemu-img resize grown-$compat.qcow2 2M >/dev/null 2>grown-$compat.err; then
    fixture grown-$compat.qcow2 "grow-$compat after qemu-img resize to 2M: the new area reads zeros" grow-base-$compat.qcow2
  fi
  runs grow-$compat.qcow2 "resize @IMG@ 2M"
done
new -o cluster_size=65536 e026-64k.qcow2 1G
new -o cluster_size=512,refcount_bits=64 e026-512.qcow2 64M
fixture e026-64k.qcow2 "empty 1 GiB, 64k clusters (errpath 026)"
fixture e026-512.qcow2 "empty 64 MiB, 512-byte clusters, 64-bit refcounts (errpath 026)"
for o in cluster_size=64k,refcount_bits=64 compat=0.10,cluster_size=4k extended_l2=on; do
  n=i-${o//[=_.,]/-}.qcow2
  new -o $o "$n" 4M
  fixture "$n" "empty 4 MiB: $o (interop)"
done

# --- cli/raw_verbs_test: qemu-img's progress and bench lines ---------------------
qemu-img create -q -f raw r-3.raw 4M
qemu-io -f raw -c "write -P 3 0 4M" r-3.raw >/dev/null
fixture r-3.raw "raw, 4 MiB of 3"
runs r-3.raw "convert -p -f raw -O raw @IMG@ @DIR@/d.raw"
qemu-img create -q -f raw r-zero.raw 1M
fixture r-zero.raw "raw, 1 MiB of zeros"
runs r-zero.raw "bench -f raw -w -c 100 -d 4 -s 4k --flush-interval=10 --pattern=171 @IMG@" "bench -c 100 -f raw @IMG@" \
  "bench -c 100 -d 2 -s 512 -S 1024 -o 4096 -w --flush-interval=10 --no-drain -f raw @IMG@"

# --- cli/qcow2_verbs_test: info, map, check, snapshot -l, measure ----------------
new v-base.qcow2 64M
io v-base.qcow2 "write -P 1 0 64k"
new -b v-base.qcow2 -F qcow2 v-top.qcow2
new -o cluster_size=4k,lazy_refcounts=on,refcount_bits=8 v-small.qcow2 1G
fixture v-base.qcow2 "64 MiB, 64k of 1 at 0"
fixture v-top.qcow2 "empty overlay over v-base (size from the backing file)" v-base.qcow2
fixture v-small.qcow2 "empty 1 GiB, 4k clusters, lazy refcounts, 8-bit refcounts"
for n in v-base v-top v-small; do
  runs $n.qcow2 "info --output=human @IMG@" "info --backing-chain @IMG@" "info --backing-chain --output=json @IMG@"
done
runs v-top.qcow2 "rebase -u -b other-name.raw -F raw @IMG@" "rebase -u -b other-name.raw -F raw @IMG@ && rebase -u -b '' @IMG@"
new m-base.qcow2 16M
io m-base.qcow2 "write -P 1 0 128k" "write -P 2 1M 64k" "write -z 2M 64k"
new -b m-base.qcow2 -F qcow2 m-top.qcow2
io m-top.qcow2 "write -P 3 64k 128k" "write -z 1M 64k"
fixture m-base.qcow2 "16 MiB: 128k of 1 at 0, 64k of 2 at 1M, zeros at 2M"
fixture m-top.qcow2 "over m-base: 128k of 3 at 64k, zeros at 1M" m-base.qcow2
runs m-base.qcow2 "map @IMG@"
runs m-top.qcow2 "map @IMG@"
new v-clean.qcow2 64M
io v-clean.qcow2 "write -P 1 0 200k" "write -P 2 10M 4k"
fixture v-clean.qcow2 "64 MiB: 200k of 1 at 0, 4k of 2 at 10M"
runs v-clean.qcow2 "amend -o cluster_size=4k @IMG@" "amend -o lazy_refcounts=on @IMG@" \
  "amend -o lazy_refcounts=on @IMG@ && amend -o lazy_refcounts=off @IMG@" "resize @IMG@ +1G"
runs w-64M.qcow2 "qemu-io -f qcow2 -c 'write -P 0xab 0 100k' -c 'write -z 1M 64k' -c 'read -P 0xab 0 100k' -c 'read -P 0 1M 64k' \
-c 'alloc 0 1M' -c map -c info -c length -c 'discard 0 64k' -c 'alloc 0 128k' @IMG@"
new v-leak.qcow2 64M
io v-leak.qcow2 "write -P 1 0 64k"
patch l2-set v-leak.qcow2 0 0
fixture v-leak.qcow2 "64 MiB, 64k of 1 at 0, then L2 entry 0 dropped: its data cluster leaks"
repairs v-leak.qcow2
new v-zeroref.qcow2 64M
io v-zeroref.qcow2 "write -P 1 0 64k"
patch refcount16-data v-zeroref.qcow2 0
fixture v-zeroref.qcow2 "64 MiB, 64k of 1 at 0, then the data cluster's refcount zeroed: a corruption"
repairs v-zeroref.qcow2
new snapshots.qcow2 16M
io snapshots.qcow2 "write -P 1 0 64k"
qemu-img snapshot -c first snapshots.qcow2
io snapshots.qcow2 "write -P 2 0 64k"
qemu-img snapshot -c "second one" snapshots.qcow2
fixture snapshots.qcow2 "16 MiB with internal snapshots 'first' (64k of 1 at 0) and 'second one' (64k of 2 at 0)"
runs snapshots.qcow2 "snapshot -l @IMG@" "info @IMG@"
new -o lazy_refcounts=on v-dirty.qcow2 16M
patch header-bit v-dirty.qcow2 72 0 set
fixture v-dirty.qcow2 "empty 16 MiB, lazy refcounts, dirty bit set by hand"
runs v-dirty.qcow2 "info -U @IMG@" "info -U --output=json @IMG@"
new -u -b gone.qcow2 -F qcow2 v-missing-backing.qcow2 1M
fixture v-missing-backing.qcow2 "1 MiB overlay whose backing file gone.qcow2 does not exist"
runs v-missing-backing.qcow2 "info --output=human @IMG@"
new v-measure.qcow2 1G
io v-measure.qcow2 "write -P 1 0 100k" "write -P 2 300M 1M" "write -z 500M 1M"
fixture v-measure.qcow2 "1 GiB: 100k of 1 at 0, 1M of 2 at 300M, zeros at 500M"
runs v-measure.qcow2 "measure -O qcow2 @IMG@" "measure -O raw @IMG@" "measure -O qcow2 -o cluster_size=4k @IMG@" \
  "measure --output=json -O qcow2 @IMG@"

# --- create_test: what qemu-img create writes for each of its shapes --------------
created "" 1073741824
created "" 0
created compat=0.10 1073741824
created cluster_size=512 1073741824
created cluster_size=4096 1073741824
created cluster_size=2M 1099511627776
created refcount_bits=1 67108864
created refcount_bits=64,cluster_size=512 4294967296
created lazy_refcounts=on 67108864
created compression_type=zstd 67108864
created extended_l2=on 1073741824
created preallocation=metadata,cluster_size=4096 67108864
created preallocation=metadata,cluster_size=512 4194304
created preallocation=metadata,cluster_size=16k,extended_l2=on 1048576
created preallocation=falloc 67108864
created preallocation=falloc,cluster_size=512,refcount_bits=64 16777216
created preallocation=falloc 0
created preallocation=full,cluster_size=4k 4194304
created cluster_size=512 68719476736
created cluster_size=512,preallocation=metadata 67108864
created cluster_size=128k,lazy_refcounts=on 268435456

deno run -q -A "$ROOT/tests/_helpers/fixture_record.ts" "$W" "$OUT"

#!/usr/bin/env bash
# Runs the stress campaign's quick subset on the native transport, then
# native/memcheck.mjs, with the addon built under AddressSanitizer (and
# LeakSanitizer), then rebuilds the normal addon. Node itself is not
# instrumented: libasan is preloaded so the instrumented addon can run inside
# it, and only leaks the addon itself allocated count (see below; the rest is
# Node's and V8's own memory at exit).
#
#   bash native/check-asan.sh            # prints a summary; exit 0 when clean
set -uo pipefail
cd "$(dirname "$0")/.."

asan=$(gcc -print-file-name=libasan.so)
[ -f "$asan" ] || { echo "check-asan: libasan.so not found (gcc's AddressSanitizer runtime)"; exit 2; }
logs=$(mktemp -d)
trap 'npm run build:native >/dev/null 2>&1 || true' EXIT

echo "check-asan: building the addon with -fsanitize=address"
CFLAGS="-fsanitize=address -fno-omit-frame-pointer -g" LDFLAGS="-fsanitize=address" npm run build:native >/dev/null 2>&1 \
  || { echo "check-asan: the ASan build failed"; exit 2; }
npm run build >/dev/null || exit 2

echo "check-asan: running the stress quick subset (native transport)"
LD_PRELOAD="$asan" \
ASAN_OPTIONS="detect_leaks=1:log_path=$logs/asan:abort_on_error=0:halt_on_error=0:detect_odr_violation=0" \
LSAN_OPTIONS="report_objects=0" \
PANTS_TS_TRANSPORT=native \
  node dist/stress/run.js --quick > "$logs/stress.txt" 2>&1
status=$?
tail -n 3 "$logs/stress.txt"

echo "check-asan: running native/memcheck.mjs (every allocating path of the addon)"
LD_PRELOAD="$asan" \
ASAN_OPTIONS="detect_leaks=1:log_path=$logs/asan:abort_on_error=0:halt_on_error=0:detect_odr_violation=0" \
  node native/memcheck.mjs > "$logs/memcheck.txt" 2>&1
mstatus=$?
tail -n 1 "$logs/memcheck.txt"
[ "$mstatus" -eq 0 ] || status=$mstatus

errors=$(grep -l "ERROR: AddressSanitizer" "$logs"/asan.* 2>/dev/null | wc -l)
# A leak report is the addon's when the code that asked for the memory is
# native/*.c: the first frame past the allocator (malloc, new, the ASan
# interceptors) and past Node-API's own layer (napi_*, v8impl: a napi_ref
# the addon forgot is still the addon's leak). Memory V8 or Node allocated
# for themselves while the addon happened to be on the stack (heap pages
# grown during napi_define_class, say) starts in v8:: or node:: code and is
# not ours.
count_ours='
/^(Direct|Indirect) leak/ { inblk = 1; decided = 0; hdr = $0; next }
inblk && !decided && / #[0-9]+ / {
  if ($0 ~ /asan|operator new|in (malloc|calloc|realloc|strdup|strndup|posix_memalign|aligned_alloc) / || $0 ~ / in (napi_|v8impl::|node_napi_env)/) next
  decided = 1
  if ($0 ~ /native\/[a-z_-]+\.c/) { n++; if (show && n <= 3) { print hdr; print } }
  next
}
/^$/ { inblk = 0 }
END { if (!show) print n + 0 }'
ours=0
for f in "$logs"/asan.*; do
  [ -e "$f" ] || continue
  ours=$((ours + $(awk -v show=0 "$count_ours" "$f")))
done
echo "check-asan: stress exit $status; AddressSanitizer errors in $errors process(es); leaks allocated by the addon: $ours"
if [ "$errors" -ne 0 ] || [ "$ours" -ne 0 ]; then
  echo "check-asan: the reports are in $logs (first ones below)"
  grep -h -A25 "ERROR: AddressSanitizer" "$logs"/asan.* 2>/dev/null | head -60
  awk -v show=1 "$count_ours" "$logs"/asan.* | head -20
else
  rm -rf "$logs"
fi
[ "$status" -eq 0 ] && [ "$errors" -eq 0 ] && [ "$ours" -eq 0 ]

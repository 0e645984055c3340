#!/usr/bin/env bash
# Side-by-side N2V training throughput: CAREamics (peer project) vs deepscope, on this CPU.
#
# Same network size (U-Net depth 2, 32 initial channels), 64x64 patches, batch 64.
# Runs back to back, so run it on an otherwise idle machine:
#   (a) CAREamics, glibc malloc defaults
#   (b) CAREamics, glibc tuned by env (MALLOC_MMAP_MAX_=0, MALLOC_TRIM_THRESHOLD_=1 GiB,
#       MALLOC_TOP_PAD_=256 MiB: what deepscope's engine sets at run time via mallopt)
#   (c) CAREamics, tcmalloc (LD_PRELOAD)
#   (d) deepscope, benchmarks/throughput_probe.py (fwd+bwd+step of its U-Net on random
#       tensors, fp32/bf16 x channels_last), glibc defaults as the probe does not tune
#       malloc; (d-tuned) the same with the env tuning of (b), which deepscope's trainer
#       applies itself.
# (a)-(c) run in CAREamics' default precision (32-true), then (after d) in bf16-mixed.
#
# CAREamics is not a deepscope dependency: it lives in its own venv, outside the repo
#   python3 -m venv /work/careamics-venv   (see careamics_throughput.py for the install)
#
# Knobs (env): CAREAMICS_PY, DEEPSCOPE_PY, EPOCHS (4, first is warm-up), STEPS (6 batches
# per epoch), PRECISIONS ("default bf16-mixed"), TCMALLOC, CAREAMICS_CAP_S (110) and
# PROBE_CAP_S (150): per-run time limits, BUDGET_S (570): later runs are cut, then
# skipped, so that the whole script stays under ~10 minutes (raise it to get them all).
set -u

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CAREAMICS_PY="${CAREAMICS_PY:-/work/careamics-venv/bin/python}"
DEEPSCOPE_PY="${DEEPSCOPE_PY:-$HERE/../.venv/bin/python}"
TCMALLOC="${TCMALLOC:-/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4}"
EPOCHS="${EPOCHS:-4}"
STEPS="${STEPS:-6}"
PRECISIONS="${PRECISIONS:-default bf16-mixed}"
BUDGET_S="${BUDGET_S:-570}"
CAREAMICS_CAP_S="${CAREAMICS_CAP_S:-110}"
PROBE_CAP_S="${PROBE_CAP_S:-150}"
TUNED_ENV=(MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_TOP_PAD_=268435456)

for exe in "$CAREAMICS_PY" "$DEEPSCOPE_PY"; do
    [ -x "$exe" ] || { echo "missing interpreter: $exe" >&2; exit 1; }
done
[ -r "$TCMALLOC" ] || echo "warning: $TCMALLOC not found, (c) will be skipped" >&2

START=$SECONDS
if pgrep -f denoise_w2s >/dev/null; then
    echo "warning: benchmarks/denoise_w2s.py is running; numbers will not be comparable" >&2
fi
echo "# $(date -Is)  $(nproc) cpus  load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "# $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"

# run LABEL MAX_S CMD... : prints each output line prefixed by the label; bounded by the budget.
run() {
    local label="$1" max="$2"; shift 2
    local left=$((BUDGET_S - (SECONDS - START)))
    local cap=$((left < max ? left : max))
    if [ "$cap" -lt 20 ]; then
        echo "[$label] SKIPPED (time budget of ${BUDGET_S}s spent)"
        return
    fi
    local t0=$SECONDS
    # the clean environment keeps allocator variables from the caller out of every run
    timeout "$cap" env -u LD_PRELOAD -u MALLOC_MMAP_MAX_ -u MALLOC_TRIM_THRESHOLD_ \
        -u MALLOC_TOP_PAD_ -u MALLOC_ARENA_MAX "$@" 2>"/tmp/compare_throughput.$$.err" \
        | sed -u "s/^/[$label] /"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ]; then
        echo "[$label] FAILED rc=$rc ($([ "$rc" -eq 124 ] && echo "timed out after ${cap}s" || echo error)); stderr tail:"
        tail -n 5 "/tmp/compare_throughput.$$.err" | sed "s/^/[$label]   /"
    fi
    echo "[$label] took $((SECONDS - t0))s"
    rm -f "/tmp/compare_throughput.$$.err"
}

CA=("$CAREAMICS_PY" "$HERE/careamics_throughput.py" --epochs "$EPOCHS" --steps "$STEPS")
careamics_runs() {
    local prec="$1"
    run "a careamics glibc-default $prec" "$CAREAMICS_CAP_S" "${CA[@]}" --precision "$prec"
    run "b careamics glibc-tuned $prec" "$CAREAMICS_CAP_S" "${TUNED_ENV[@]}" "${CA[@]}" --precision "$prec"
    if [ -r "$TCMALLOC" ]; then
        run "c careamics tcmalloc $prec" "$CAREAMICS_CAP_S" LD_PRELOAD="$TCMALLOC" "${CA[@]}" --precision "$prec"
    fi
}
PROBE=("$DEEPSCOPE_PY" "$HERE/throughput_probe.py" --batch 64 --steps 15)

# First precision of CAREamics, then deepscope, then the other precisions, so that the
# main comparison survives if the budget runs out.
set -- $PRECISIONS
careamics_runs "$1"; shift
run "d deepscope probe glibc-default" "$PROBE_CAP_S" "${PROBE[@]}"
run "d deepscope probe glibc-tuned" "$PROBE_CAP_S" "${TUNED_ENV[@]}" "${PROBE[@]}"
for prec in "$@"; do careamics_runs "$prec"; done

echo "# total $((SECONDS - START))s"

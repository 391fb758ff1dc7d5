#!/usr/bin/env bash
# The whole suite under several OpenBLAS kernels and thread counts, one run each, with a summary line per run.
#
#   bash tests/across_cpus.sh                          # kernels Haswell Sandybridge Prescott, threads 1 2 3
#   KERNELS="SkylakeX Zen" THREADS="2" bash tests/across_cpus.sh
#
# OPENBLAS_CORETYPE makes NumPy's OpenBLAS use another CPU's kernel (it must be one this CPU can execute:
# SkylakeX needs AVX-512); OMP_NUM_THREADS sets numpy_vit's threads, OpenBLAS's and torch's. Each run prints the
# kernel that threadpoolctl reports, so a kernel this OpenBLAS does not have (it falls back silently) shows.
set -uo pipefail
cd "$(dirname "$0")/.."
KERNELS=${KERNELS:-"Haswell Sandybridge Prescott"}
THREADS=${THREADS:-"1 2 3"}
status=0
run() {  # run LABEL ENV...: the suite with ENV set
    local label=$1; shift
    local kernel start took summary
    kernel=$(env "$@" python -c "import threadpoolctl, numpy; print(*[l.get('architecture') for l in threadpoolctl.threadpool_info() if l['user_api'] == 'blas'])")
    start=$(date +%s)
    summary=$(env "$@" python -m pytest -q -p no:cacheprovider 2>&1 | tail -n 1) || status=1   # pipefail: pytest's status
    took=$(( $(date +%s) - start ))
    printf '%-28s kernel %-12s %4ss  %s\n' "$label" "$kernel" "$took" "$summary"
}
for kernel in $KERNELS; do
    run "OPENBLAS_CORETYPE=$kernel" OPENBLAS_CORETYPE="$kernel"
done
for threads in $THREADS; do
    run "OMP_NUM_THREADS=$threads" OMP_NUM_THREADS="$threads"
done
exit $status

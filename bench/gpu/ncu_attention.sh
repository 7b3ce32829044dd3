#!/usr/bin/env bash
# Hardware counters of the long-context attention rows (bench/gpu/ncu_attention.py) on one GPU:
#   OUT=dir bash bench/gpu/ncu_attention.sh
# Writes $OUT/ncu-attention.{log,csv,md} (and the .ncu-rep report); prints the table last.
set -euo pipefail
OUT=${OUT:?set OUT}
mkdir -p "$OUT"
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | tail -1)
export PYTHONPATH=.
"$NCU" --clock-control none --profile-from-start off --target-processes all \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
    --section SchedulerStats --section MemoryWorkloadAnalysis \
    -f -o "$OUT/ncu-attention" python bench/gpu/ncu_attention.py 2>&1 | tee "$OUT/ncu-attention.log"
"$NCU" -i "$OUT/ncu-attention.ncu-rep" --csv --page raw > "$OUT/ncu-attention.csv"
python bench/gpu/ncu_table.py "$OUT/ncu-attention.log" "$OUT/ncu-attention.csv" | tee "$OUT/ncu-attention.md"

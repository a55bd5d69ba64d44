#!/bin/bash
# Tiling a cohort as a SLURM array job, then one dependent job that merges the shards' manifests.
# Array task I of N tiles its share of the slides (`pathgen tile --shard I/N`: slides go to shards by a stable hash
# of their names, so adding slides moves no other) into the one shared output folder, writing its own
# manifest.shard-I-of-N.csv; `pathgen manifest merge` then writes manifest.csv (every slide once) and summary.txt.
#   N=16
#   jid=$(sbatch --parsable --array=0-$((N - 1)) pipelines/slurm/tile_array.sh tile cohort.csv runs/tiles $N)
#   sbatch --dependency=afterok:$jid pipelines/slurm/tile_array.sh merge runs/tiles
# Then point the training at runs/tiles/manifest.csv (data.sources=[runs/tiles/manifest.csv]). Task ids are
# 0-based (--array=0-15). Other `pathgen tile` options go in PATHGEN_TILE_ARGS (defaults: 0.5 mpp, 256 px, JPEG):
#   PATHGEN_TILE_ARGS="--mpp 0.25 --patch-size 224" sbatch --array=0-15 ... tile_array.sh tile cohort.csv OUT 16
# A resubmitted task skips the slides it already finished. A task whose slides partly failed still succeeds (the
# failures are rows of its manifest, which the merge sums up); a task that could not finish fails, and afterok
# then holds the merge back.
#SBATCH --job-name=pathgen-tile
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=pathgen-tile-%A_%a.log
set -euo pipefail
usage="usage: tile_array.sh tile SLIDES OUT [N] | tile_array.sh merge OUT"
MODE=${1:?$usage}
case "$MODE" in
    tile)
        SLIDES=${2:?$usage}
        OUT=${3:?$usage}
        N=${4:-${SLURM_ARRAY_TASK_COUNT:?$usage (or run as an array job)}}
        I=${SLURM_ARRAY_TASK_ID:?tile mode runs as a SLURM array task (sbatch --array=0-$((N - 1)))}
        SUMMARY="$OUT/summary.shard-$I-of-$N.txt"  # written once a task has been through all of its slides
        [ "$N" -eq 1 ] && SUMMARY="$OUT/summary.txt"
        rm -f "$SUMMARY"
        status=0
        # shellcheck disable=SC2086
        pathgen tile "$SLIDES" --out "$OUT" --shard "$I/$N" --workers "${SLURM_CPUS_PER_TASK:-8}" \
            ${PATHGEN_TILE_ARGS:-} || status=$?
        if [ "$status" -ne 0 ] && [ -f "$SUMMARY" ]; then
            echo "shard $I/$N: some slides failed (see $OUT/manifest.shard-$I-of-$N.csv); the others are tiled"
            status=0
        fi
        exit "$status"
        ;;
    merge)
        pathgen manifest merge "${2:?$usage}"
        ;;
    *)
        echo "$usage" >&2
        exit 2
        ;;
esac

#!/bin/bash
# One training step of a pipeline on several GPU nodes: srun starts `pathgen run --only STEP` on every node, and
# each launches torchrun with its node's rank (SLURM_NODEID) against node 0's rendezvous endpoint. Node 0 keeps
# the run record; a requeued or resubmitted job resumes the step from its last checkpoint.
#   sbatch --nodes 4 --gpus-per-node 8 pipelines/slurm/train_multinode.sh pipelines/histo_gensis.yaml runs/histo ssl
# The steps before STEP must be done (run them first, e.g. `pathgen run ... --until tile` on a CPU node).
#SBATCH --job-name=pathgen-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --requeue
#SBATCH --output=pathgen-train-%j.log
set -euo pipefail
PIPELINE=${1:?usage: train_multinode.sh PIPELINE RUN_DIR STEP}
RUN=${2:?usage: train_multinode.sh PIPELINE RUN_DIR STEP}
STEP=${3:?usage: train_multinode.sh PIPELINE RUN_DIR STEP}
NODES=${SLURM_NNODES:-1}
GPUS=${SLURM_GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_ADDR
export MASTER_PORT=${MASTER_PORT:-29500}
# PATHGEN_RUN_ARGS: extra arguments, e.g. --plan to print what would run; SRUN="" runs without srun (tests)
# shellcheck disable=SC2086
${SRUN-srun} pathgen run "$PIPELINE" --out "$RUN" --only "$STEP" "$STEP.nodes=$NODES" "$STEP.gpus=$GPUS" \
    ${PATHGEN_RUN_ARGS:-}

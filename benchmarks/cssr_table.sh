#!/bin/bash
# Salvador et al. Table 3 shape on mini-rparis6k: no re-ranking vs CA-SR vs CS-SR, each without and with AQE.
# The CS-SR classifier is fine-tuned on mini-rparis6k's 12 query boxes (+ flips), as the paper does for
# Oxford/Paris; the IPA-sum filter's PCA-whitening is learned on smvs-dvd-covers covers 001-050 (never evaluated
# here). Usage: benchmarks/cssr_table.sh OUTDIR TRAIN_FOLDER [STRATEGY]   (strategy 1: head only, 2: + last stage)
set -e
W=${1:?outdir}; TRAIN=${2:?covers 001-050 folder (benchmarks/smvs_folder.py)}; S=${3:-1}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
I=${INSTAR:-instar}
D=../shared/data/mini-rparis6k
COMMON="--preset ipa-sum-lite0 --set regions.method=sliding --set region_pooling.method=max"
mkdir -p "$W"
$I train-cs-sr mini-rparis6k --data $D $COMMON --strategy $S --out $W/cssr$S.pth -q | tee $W/train$S.log
TRUNK=""; [ "$S" = 2 ] && TRUNK="--weights $W/cssr$S.pth"
for R in none ca-sr cs-sr; do for QE in none aqe; do
  A="--set rerank.method=$R --set expansion.method=$QE"
  [ $R = cs-sr ] && A="$A --set rerank.weights=$W/cssr$S.pth"
  [ $QE = aqe ] && A="$A --set expansion.top=5"
  $I eval mini-rparis6k --data $D $COMMON --train "$TRAIN" --workdir $W/ft$S $TRUNK $A -q --json $W/ft$S-$R-$QE.json \
    | tee $W/ft$S-$R-$QE.txt
done; done

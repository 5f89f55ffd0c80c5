while kill -0 $(cat /tmp/h17r/bench.pid) 2>/dev/null; do sleep 5; done
cd /work/wt-h17r
export OMP_NUM_THREADS=1 PYTHONPATH=.
PY=/work/main/.venv/bin/python
$PY benchmarks/compact_regions.py --dataset smvs-dvd-covers-ins-test --data /work/shared/data/smvs-dvd-covers --train /work/shared/data/mini-rparis6k/jpg --preset d2r-regional-lite0 --set coding.method=pq --set coding.m=128 --workdir /tmp/h17r/wd > /tmp/h17r/bench/smvs.d2r.txt 2>&1
$PY benchmarks/compact_regions.py --dataset mini-rparis6k --data /work/shared/data/mini-rparis6k --train /work/shared/data/smvs-dvd-covers/jpg --preset d2r-regional-lite0 --set coding.method=pq --set coding.m=128 --workdir /tmp/h17r/wd > /tmp/h17r/bench/rparis.d2r.txt 2>&1

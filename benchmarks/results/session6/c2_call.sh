pip install --no-index --no-deps --target /tmp/site .whl/*.whl >/dev/null 2>&1
export PYTHONPATH=/tmp/site:$PWD
KV="python3 -m kvprof.cli"
mkdir -p $OUT/r
( timeout 300 python3 benchmarks/overhead.py --method bf16 --config wan-1.3b --frames 42 --no-decode --modes untraced,kvprof --repeat 3 --out /tmp/kv/ovb > $OUT/r/bf16_42_overhead.json 2>$OUT/r/bf16_42_overhead.err ) ; tail -2 $OUT/r/bf16_42_overhead.err
python3 -c "import json; d=json.load(open('$OUT/r/bf16_42_overhead.json')); print(json.dumps(d.get('summary', d), indent=0)[:3000])"
( /usr/bin/time -v timeout 280 python3 benchmarks/overhead.py --mode kvprof --method prq_int4 --config wan-1.3b --frames 42 --no-decode --out /tmp/kv/ovp > $OUT/r/prq_42_kvprof.json 2>$OUT/r/prq_42_kvprof.err ); grep -E "Maximum resident|Elapsed" $OUT/r/prq_42_kvprof.err; cat $OUT/r/prq_42_kvprof.json | cut -c1-1500
P=$(ls -d /tmp/kv/ovp/*/ | head -1); echo $P; du -sh $P; ls -la $P
for c in summary diagnose; do /usr/bin/time -f "$c %e s %M KB" $KV $c $P > $OUT/r/open_$c.txt 2>>$OUT/r/open_times.txt; done; /usr/bin/time -f "report-md %e s %M KB" $KV report $P -o $OUT/r/report.md 2>>$OUT/r/open_times.txt; cat $OUT/r/open_times.txt | tail -5
cd $OUT && tar czf r.tgz r && rm -rf r

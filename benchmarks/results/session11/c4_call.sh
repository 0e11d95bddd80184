#!/bin/bash
# Session 11, call 4 (the machine of call 3, kept warm): call 3 started prq_int4 study 252 f detached (setsid nohup), and
# it outlived call 3; this call waited for it (pgrep) and brought back its outputs, meta.json and the folder sizes.
# Device call: run(kind="nvidia-h100-x4", timeout_s=480, command=...)
mkdir -p $OUT/r; cp /tmp/kv/bg/steps.log $OUT/r/bg_steps0.log 2>/dev/null; if pgrep -f "long:prq_int4:study:252" >/dev/null; then echo alive; for i in $(seq 1 88); do pgrep -f "long:prq_int4:study:252" >/dev/null || break; sleep 5; done; else echo gone; fi; cp -r /tmp/kv/bg/* $OUT/r/ 2>/dev/null; rm -f $OUT/r/pip.log; cp /tmp/kv/long/prq_int4-study-252/meta.json $OUT/r/meta_252.json 2>/dev/null; du -sh /tmp/kv/long/* > $OUT/r/du.txt 2>&1; ls -la /tmp/kv/long/prq_int4-study-252 >> $OUT/r/du.txt 2>&1; cd $OUT && tar czf r.tgz r && rm -rf r

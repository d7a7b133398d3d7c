#!/usr/bin/env bash
# The GPU checks of fedsim in one go (issue 32): on a machine with a CUDA device,
#   1. the executor equality tests on CUDA (tests/test_learning_cuda.py: sequential and
#      batched executors with training.device=cuda against the CPU reference);
#   2. one `fedsim run` of the learning bench's workload on CUDA (batched executor), timed;
#   3. the learning bench itself (CPU figures of the same machine, for the ratios).
# Where torch sees no CUDA device the tests skip with that reason and the script stops after them.
#
# Usage: bench/gpu_check.sh [PYTHON]   (default: python; run from anywhere; prints everything to stdout)
set -u
cd "$(dirname "$0")/.."
PY=${1:-python}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda available:', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
echo "== 1. executor equality tests on CUDA"
"$PY" -m pytest -q -rs -p no:cacheprovider tests/test_learning_cuda.py
status=$?
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device: the CUDA tests skipped; nothing more to check here"
  exit $status
fi
echo "== 2. fedsim run of the learning bench's workload on CUDA (batched executor, 20 rounds, evaluation every round)"
out=$(mktemp -d)
"$PY" - "$out" <<'PYEOF'
import subprocess, sys, time
sys.path.insert(0, "bench")
import learning_speed as ls
args = ls.cli_args("batched", 20, 2, __import__("pathlib").Path(sys.argv[1]) / "run")
args = [a.replace("training.device=cpu", "training.device=cuda") for a in args]
t0 = time.perf_counter()
done = subprocess.run([sys.executable, "-m", "fedsim.cli", *args], capture_output=True, text=True)
print(done.stdout[-600:], done.stderr[-2000:])
print(f"cuda_run wall_s={time.perf_counter() - t0:.2f} rc={done.returncode}")
PYEOF
rm -rf "$out"
echo "== 3. the learning bench (CPU, one thread)"
"$PY" bench/learning_speed.py --repeats 3
exit $status

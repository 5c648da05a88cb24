#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md in one command: train step, sampler and one SCoRe
# Stage II iteration at the Qwen2.5-0.5B shape (= Qwen2-0.5B) with bf16 compute, torch on
# cuda, each under its own time limit (about 10 minutes in all on one H100/H200-class GPU,
# compilation included). Rows are appended to benchmarks/RESULTS.md; the JSON lines also go to
# $OUT (or ./accelerator-out) with nvidia-smi's view of the GPU.
#
#   bash benchmarks/accelerator.sh                 # from the repository root
#   SMOKE=1 bash benchmarks/accelerator.sh         # tiny sizes, records nothing (a plumbing check)
#
# Needs jax with its CUDA plugin, torch with CUDA, transformers, flax, optax, ml-collections,
# orbax-checkpoint (`pip install -e '.[test]'` then `pip install -U "jax[cuda12]"`). On a
# machine that cannot reach PyPI, bring missing pure-Python wheels in ./.whl (e.g. `pip
# download --no-deps -d .whl ml-collections==1.1.0`): they are installed to /tmp/site first.
set -u
cd "$(dirname "$0")/.."
out=${OUT:-accelerator-out}
mkdir -p "$out"
py=${PYTHON:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv \
  > "$out/gpu.txt" 2>&1 || true
status=0
run() {  # run <seconds> <name> <script> <flags...>
  local limit=$1 name=$2
  shift 2
  echo "== $name" >&2
  timeout "$limit" $py "$@" > "$out/$name.json" 2> "$out/$name.log" || {
    echo "$name failed or timed out (rc $?); see $out/$name.log" >&2
    tail -20 "$out/$name.log" >&2
    status=1
  }
  cat "$out/$name.json"
}
p=(--preset qwen2.5-0.5b --dtype bfloat16)
[[ -n ${SMOKE:-} ]] && p+=(--smoke)
run 200 train_step benchmarks/train_step.py "${p[@]}" --repeats 5
run 160 sampler benchmarks/sampler.py "${p[@]}" --batch 64 --new_tokens 256
run 240 rl_step benchmarks/rl_step.py "${p[@]}" --repeats 3
cp benchmarks/RESULTS.md "$out/RESULTS.md"
exit $status

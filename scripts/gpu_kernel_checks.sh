#!/usr/bin/env bash
# GPU kernel checks and benchmarks (issue 13), meant to be called from scripts/gpu_check.sh:
#
#   source scripts/gpu_kernel_checks.sh
#   gpu_kernel_checks "$OUT_DIR"          # appends rows to $OUT_DIR/kernel_checks.tsv
#
# or on its own from the repository root:  bash scripts/gpu_kernel_checks.sh [out_dir]
#
# It runs, each under its own timeout (together at most ~7 min; not yet timed on a GPU):
#   1. kernel parity, bf16 (pytest -m gpu tests/kernels -k bfloat16): Mamba kernels vs the
#      pure-torch ops (outputs, states, input and parameter gradients), causal_conv1d's seeded
#      conv if installed, compiled block-sparse FlexAttention forward+backward vs the dense mask
#      and its memory growing linearly in L. GPU_KERNEL_CHECKS_FP32=1 adds the fp32 run.
#   2. benchmarks/step_time.py: nano-proxy AR step vs two-tower step (L=8192, S=16, bf16).
#   3. benchmarks/attention.py: block-sparse vs dense-mask attention at L = 2k, 8k, 32k.
# torch.compile must be live for FlexAttention, so TORCHDYNAMO_DISABLE is set to 0 here.
# PYTHON (default: python) is the interpreter that has the project installed.

gpu_kernel_checks() {
  local out="${1:-gpu_check_out}" py="${PYTHON:-python}" status
  mkdir -p "$out"
  local tsv="$out/kernel_checks.tsv" select="bfloat16"
  [ "${GPU_KERNEL_CHECKS_FP32:-0}" = 1 ] && select="bfloat16 or float32"

  TORCHDYNAMO_DISABLE=0 timeout 240 "$py" -m pytest -q -p no:cacheprovider -m gpu \
    tests/kernels -k "$select" >"$out/kernel_parity.log" 2>&1
  status=$?
  printf 'kernel parity (%s)\t%s\t%s\n' "$select" \
    "$([ $status = 0 ] && echo ok || echo "FAILED ($status)")" \
    "$(tail -n 1 "$out/kernel_parity.log")" >>"$tsv"

  TORCHDYNAMO_DISABLE=0 timeout 150 "$py" benchmarks/step_time.py --repeats 3 \
    >"$out/step_time.log" 2>&1
  status=$?
  "$py" - "$out/step_time.log" "$status" >>"$tsv" <<'EOF'
import json, sys
log, status = sys.argv[1], sys.argv[2]
try:
    r = json.loads(open(log).read().strip().splitlines()[-1])
    ar, tt = r["rows"]
    mfu = lambda row: "-" if row["mfu"] is None else f"{row['mfu']:.1%}"
    print(f"step time {r['preset']} L={r['seq_len']} S={r['block_size']}\t"
          f"{'ok' if r['within_target'] else 'OVER TARGET'}\t"
          f"two-tower/AR {r['ratio']:.3f}x (target <= {r['target_ratio']}), "
          f"tok/s AR {ar['tokens_per_s']:,.0f} / 2T {tt['tokens_per_s']:,.0f}, "
          f"MFU AR {mfu(ar)} / 2T {mfu(tt)}, "
          f"peak MiB AR {ar['peak_memory_mib']:.0f} / 2T {tt['peak_memory_mib']:.0f}")
except Exception as error:  # the log holds the traceback
    print(f"step time\tFAILED (exit {status})\t{type(error).__name__}: see {log}")
EOF

  TORCHDYNAMO_DISABLE=0 timeout 180 "$py" benchmarks/attention.py --repeats 3 \
    >"$out/attention.log" 2>&1
  status=$?
  "$py" - "$out/attention.log" "$status" >>"$tsv" <<'EOF'
import json, sys
log, status = sys.argv[1], sys.argv[2]
try:
    r = json.loads(open(log).read().strip().splitlines()[-1])
    cells = [f"L={x['L']} {x['kernel']} " + (f"{x['ms']:.1f} ms {x['peak_extra_mib']:.0f} MiB"
             if x["status"] == "ok" else x["status"]) for x in r["rows"]]
    ok = all(x["status"] == "ok" for x in r["rows"] if x["kernel"] == "flex")
    print(f"denoiser attention S={r['block_size']}\t{'ok' if ok else 'FAILED'}\t" + "; ".join(cells))
except Exception as error:
    print(f"denoiser attention\tFAILED (exit {status})\t{type(error).__name__}: see {log}")
EOF
  column -t -s $'\t' "$tsv" 2>/dev/null || cat "$tsv"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cd "$(dirname "$0")/.." || exit 1
  gpu_kernel_checks "$@"
fi

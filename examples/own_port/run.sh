#!/usr/bin/env bash
# The own-port loop, end to end, as a test:
#   1. the reference: a tiny Qwen2 (config.json) with seeded random weights, exported by
#      parity_export.py --hf-config, its weights saved under their Hugging Face names (--save-weights);
#   2. a hand-written port (port.py: fused q/k/v and gate/up, other module names) loading those weights,
#      first with a bug port authors make (RMSNorm eps 1e-5, Llama's default, where the config says 1e-6);
#   3. parity check REF PORT: divergent (exit 1), first divergence at layer 0's input norm, cause epsilon;
#   4. the fixed port: parity check: equivalent (exit 0).
# usage: examples/own_port/run.sh PARITY_BINARY PYTHON OUT_DIR
#   PYTHON needs torch, transformers and safetensors; without transformers it says so and exits 77 (skipped).
# Exit 0 when every verdict is as expected, 1 when one is not, 2 on a usage error.
set -euo pipefail
if [ $# -ne 3 ]; then
  echo "usage: $0 PARITY_BINARY PYTHON OUT_DIR" >&2
  exit 2
fi
PARITY=$1 PY=$2 OUT=$3
HERE=$(cd "$(dirname "$0")" && pwd)
EXPORT="$HERE/../../scripts/parity_export.py"

step() { printf '\n== %s\n' "$*"; }
show() { printf '$ %s\n' "$*"; }
fail() { echo "own_port: FAIL: $*" >&2; exit 1; }

if ! "$PY" -c 'import torch, transformers, safetensors' 2>/dev/null; then
  echo "own_port: skipped: $PY cannot import torch, transformers and safetensors (the reference is a transformers model)"
  exit 77
fi
rm -rf "$OUT"
mkdir -p "$OUT"
export PORT_CONFIG="$HERE/config.json" PORT_WEIGHTS="$OUT/reference.safetensors"

step "1. the reference: transformers' Qwen2 from config.json, random weights (seed 0), and those weights saved"
show "$PY scripts/parity_export.py --hf-config config.json --random-init --seed 0 --save-weights $PORT_WEIGHTS --out $OUT/reference"
"$PY" "$EXPORT" --hf-config "$HERE/config.json" --random-init --seed 0 --save-weights "$PORT_WEIGHTS" \
  --out "$OUT/reference"

# verdict FIELD...: prints verdict.json's fields (dotted paths), one a line
verdict() {
  "$PY" - "$@" <<'EOF'
import json, sys
v = json.load(open(sys.argv[1]))
for path in sys.argv[2:]:
    x = v
    for k in path.split("."):
        x = x.get(k) if isinstance(x, dict) else None
    print(x)
EOF
}

check() {  # check PORT_DIR RESULTS_DIR EXPECTED_EXIT
  show "parity check $OUT/reference $1 --out $2"
  local rc=0
  "$PARITY" check "$OUT/reference" "$1" --out "$2" --cache-dir "$OUT/cache" || rc=$?
  [ "$rc" -eq "$3" ] || fail "parity check $1 exited $rc, expected $3"
}

step "2. the port's first version: RMSNorm eps hard-coded to 1e-5 (Llama's default); the config says 1e-6"
sed 's/self\.eps = eps$/self.eps = 1e-5  # Llama'"'"'s default/' "$HERE/port.py" > "$OUT/port_v1.py"
show "diff port.py port_v1.py"
diff "$HERE/port.py" "$OUT/port_v1.py" && fail "the planted bug's line (self.eps = eps) is not in port.py"
show "PORT_WEIGHTS=$PORT_WEIGHTS $PY scripts/parity_export.py --module port_v1.py:make --out $OUT/port_v1"
"$PY" "$EXPORT" --module "$OUT/port_v1.py:make" --out "$OUT/port_v1"

step "3. parity check: divergent (exit 1), first divergence at layer 0's input norm, an epsilon"
check "$OUT/port_v1" "$OUT/check_v1" 1
got=$(verdict "$OUT/check_v1/verdict.json" verdict first_divergence.reference first_divergence.target \
      first_divergence.cause.class | tr '\n' ' ')
want="divergent m.model.layers.0.input_layernorm blocks.0.norm1 epsilon "
[ "$got" = "$want" ] || fail "verdict.json of the buggy port: '$got', expected '$want'"
echo "own_port: as expected: $got"

step "4. the fixed port (port.py: eps from the config): equivalent (exit 0)"
show "PORT_WEIGHTS=$PORT_WEIGHTS $PY scripts/parity_export.py --module port.py:make --out $OUT/port"
"$PY" "$EXPORT" --module "$HERE/port.py:make" --out "$OUT/port"
check "$OUT/port" "$OUT/check" 0
got=$(verdict "$OUT/check/verdict.json" verdict)
[ "$got" = "equivalent" ] || fail "verdict.json of the fixed port: '$got', expected 'equivalent'"

echo
echo "own_port: ok: the buggy port divergent at m.model.layers.0.input_layernorm (epsilon), the fixed port equivalent"

#!/usr/bin/env bash
# CLI tests, one subcommand per invocation: test_cli.sh SUBCOMMAND PARITY_BINARY FIXTURES_DIR
# Each case runs the real binary and checks its exit code and what it printed.
set -u
cmd=$1 parity=$2 fx=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0 cases=0

# expect CODE PATTERN -- ARGS...: exit code must be CODE and stdout+stderr must match PATTERN
expect() {
  local code=$1 pattern=$2
  shift 3
  cases=$((cases + 1))
  local out rc
  out=$("$parity" "$@" 2>&1)
  rc=$?
  if [[ $rc -ne $code ]] || ! grep -qE -- "$pattern" <<<"$out"; then
    failures=$((failures + 1))
    printf 'FAIL: parity %s\n  want exit %s and /%s/\n  got exit %s:\n%s\n' "$*" "$code" "$pattern" "$rc" "$(sed 's/^/    /' <<<"$out" | head -20)"
  else
    printf 'ok   parity %s -> %s\n' "$*" "$rc"
  fi
}

case $cmd in
version)
  expect 0 '^parity [0-9]+\.[0-9]+\.[0-9]+ \(LuaJIT 2\.1.*LibTorch 1\.13.*threads\)$' -- version
  expect 0 '^parity [0-9]' -- --version
  expect 2 'unexpected argument' -- version extra
  ;;
help)
  expect 0 'Commands:' -- --help
  expect 0 'Exit codes: 0 ok, 1 a check failed, 2' -- help
  expect 0 'Usage: parity tree MODEL' -- help tree
  expect 0 'Usage: parity tree MODEL' -- tree --help
  expect 0 'Usage: parity run SCRIPT' -- run --help
  expect 2 'Usage: parity' --            # no command: usage on stderr, exit 2
  expect 2 "unknown command 'bogus'" -- bogus
  expect 2 "unknown command 'bogus'" -- help bogus
  expect 2 'stdlib-dir needs a directory' -- --stdlib-dir
  ;;
tree)
  expect 0 '└─ lm_head: Linear  \[32\.8K\]' -- tree "$fx/reference"
  expect 0 '│  ├─ rotary_emb: LlamaRotaryEmbedding' -- tree "$fx/reference"
  expect 0 'blocks\.0\.attn\.qkv_proj	Linear	8192' -- tree "$fx/port_fused" --flat
  # execution order: the rotary embedding runs before the first layer although defined after
  cases=$((cases + 1))
  order=$("$parity" tree "$fx/reference" --flat | cut -f1 | grep -nE '^model\.(rotary_emb|layers\.0)$' | cut -d: -f2 | tr '\n' ' ')
  if [[ $order != "model.rotary_emb model.layers.0 " ]]; then
    failures=$((failures + 1)); echo "FAIL: tree --flat order: $order"
  else echo "ok   tree --flat execution order"; fi
  cases=$((cases + 1))
  if "$parity" tree "$fx/reference_fp32.pt" --json | python3 -c 'import json,sys; t=json.load(sys.stdin); assert t["type"]=="LlamaForCausalLM" and t["children"][0]["path"]=="model", t'; then
    echo "ok   tree --json parses"; else failures=$((failures + 1)); echo "FAIL: tree --json"; fi
  expect 2 "^parity tree: $fx/missing: no such file or directory$" -- tree "$fx/missing"
  expect 2 "^parity tree: $fx/corrupt.pt: not a loadable TorchScript file" -- tree "$fx/corrupt.pt"
  expect 2 '^parity tree: missing MODEL \(see parity tree --help\)$' -- tree
  expect 2 'unknown option --wide' -- tree "$fx/reference" --wide
  expect 2 'exclude each other' -- tree "$fx/reference" --flat --json
  ;;
run)
  mkdir -p "$tmp/lib"
  echo 'return { answer = 42 }' >"$tmp/lib/helper.lua"
  cat >"$tmp/args.lua" <<'LUA'
local helper = require("lib.helper")  -- the script's directory is on package.path
print(("args=%s,%s n=%d first=%s answer=%d"):format(arg[1], arg[2], select("#", ...), (...), helper.answer))
LUA
  echo 'return 1' >"$tmp/fail.lua"
  echo 'return false' >"$tmp/false.lua"
  printf 'local function inner() error("boom") end\ninner()\n' >"$tmp/error.lua"
  echo 'local x = = 1' >"$tmp/syntax.lua"
  echo 'return torch.ones(2):add("x")' >"$tmp/native.lua"
  echo 'require("parity.tree").pretty({})' >"$tmp/stdlib_error.lua"
  expect 0 '^args=a,b n=2 first=a answer=42$' -- run "$tmp/args.lua" a b
  expect 1 '^$' -- run "$tmp/fail.lua"
  expect 1 '^$' -- run "$tmp/false.lua"
  expect 2 'error.lua:1: boom' -- run "$tmp/error.lua"
  expect 2 'stack traceback:' -- run "$tmp/error.lua"
  expect 2 "error.lua:2: in main chunk" -- run "$tmp/error.lua"
  expect 2 "syntax.lua:1: unexpected symbol near '='" -- run "$tmp/syntax.lua"
  expect 2 'cannot open .*nothing.lua' -- run "$tmp/nothing.lua"
  expect 2 'no overload matches \(Tensor, string\)' -- run "$tmp/native.lua"
  expect 2 '^parity run: missing SCRIPT \(see parity run --help\)$' -- run
  # errors inside the embedded stdlib name the repository file
  expect 2 'stdlib/parity/tree.lua:[0-9]+:' -- run "$tmp/stdlib_error.lua"
  # --stdlib-dir loads the stdlib from disk: a change there is seen without rebuilding
  mkdir -p "$tmp/stdlib/parity"
  cp -r "$(dirname "$0")/../../stdlib/parity/." "$tmp/stdlib/parity/"
  echo 'return { pretty = function() error("edited on disk") end }' >"$tmp/stdlib/parity/tree.lua"
  expect 2 'edited on disk' -- --stdlib-dir "$tmp/stdlib" run "$tmp/stdlib_error.lua"
  cases=$((cases + 1))
  if out=$(PARITY_STDLIB_DIR="$tmp/stdlib" "$parity" run "$tmp/stdlib_error.lua" 2>&1); [[ $out == *"edited on disk"* ]]; then
    echo "ok   PARITY_STDLIB_DIR"; else failures=$((failures + 1)); echo "FAIL: PARITY_STDLIB_DIR: $out"; fi
  ;;
*)
  echo "unknown subcommand to test: $cmd"
  exit 2
  ;;
esac
echo "$cases cases, $failures failed"
[[ $cases -gt 0 && $failures -eq 0 ]]

#!/usr/bin/env bash
# CLI tests, one subcommand per invocation: test_cli.sh SUBCOMMAND PARITY_BINARY FIXTURES_DIR
# Each case runs the real binary and checks its exit code and what it printed.
set -u
cmd=$1 parity=$2 fx=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0 cases=0

# expect CODE PATTERN -- ARGS...: exit code must be CODE and stdout+stderr must match PATTERN
# (trailing @NAME=VALUE arguments set environment variables for that run)
expect() {
  local code=$1 pattern=$2
  shift 3
  cases=$((cases + 1))
  local out rc args=() envs=()
  for a in "$@"; do if [[ $a == @*=* ]]; then envs+=("${a#@}"); else args+=("$a"); fi; done
  set -- "${args[@]}"
  out=$(env "${envs[@]}" "$parity" "$@" 2>&1)
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
  expect 0 '^parity [0-9]+\.[0-9]+\.[0-9]+ \(LuaJIT 2\.1.*LibTorch [0-9]+\.[0-9]+.*threads, [0-9]+ CUDA devices?\)$' -- version
  expect 0 '^parity [0-9]' -- --version
  expect 2 'unexpected argument' -- version extra
  ;;
help)
  expect 0 'Commands:' -- --help
  expect 0 'Exit codes: 0 ok, 1 a check failed, 2' -- help
  expect 0 'Usage: parity tree MODEL' -- help tree
  expect 0 'Usage: parity tree MODEL' -- tree --help
  expect 0 'Usage: parity run \[--device D\] SCRIPT' -- run --help
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
  # a .pt2 package (torch.export, AOTInductor): read by a LibTorch 2.x build, one line elsewhere
  mkdir -p "$tmp/pt2" && printf 'PK\005\006%018d' 0 >"$tmp/pt2/fp32.pt2" && cp "$tmp/pt2/fp32.pt2" "$tmp/pt2/bf16.pt2"
  if "$parity" version | grep -q 'LibTorch 1\.'; then
    pt2_why='a torch\.export program \(\.pt2\); this parity is built against LibTorch 1\.[0-9.]+, which has no AOTInductor package loader; a parity built against a pip torch 2\.x'
  else
    pt2_why='not a loadable AOTInductor package'
  fi
  expect 2 "^parity tree: $tmp/pt2/fp32.pt2: $pt2_why" -- tree "$tmp/pt2"
  expect 2 "^parity tree: $tmp/pt2/fp32.pt2: $pt2_why" -- tree "$tmp/pt2/fp32.pt2"
  expect 2 "^parity gate: $tmp/pt2/(bf16|fp32).pt2: $pt2_why" -- gate "$fx/reference" "$tmp/pt2"
  expect 2 "^parity check: $tmp/pt2/(bf16|fp32).pt2: $pt2_why" -- check "$fx/reference" "$tmp/pt2" --out "$tmp/pt2_out"
  cp "$fx/reference/fp32.pt" "$tmp/pt2/fp32.pt"
  expect 2 "both fp32.pt and fp32.pt2: keep one model a dtype" -- tree "$tmp/pt2"
  expect 2 '^parity tree: missing MODEL \(see parity tree --help\)$' -- tree
  expect 2 'unknown option --wide' -- tree "$fx/reference" --wide
  expect 2 'exclude each other' -- tree "$fx/reference" --flat --json
  expect 0 '^│  ├─ layers: ModuleList  \[92\.4K\]$' -- tree "$fx/reference" --compressed
  expect 0 '^│  │  └─ \{0\.\.1\}: LlamaDecoderLayer  \[46\.2K each\]$' -- tree "$fx/reference" --compressed
  cases=$((cases + 1))
  if [[ $("$parity" tree "$fx/reference" --compressed | grep -c 'input_layernorm') -eq 1 ]]; then
    echo "ok   --compressed shows a folded layer once"; else failures=$((failures + 1)); echo "FAIL: --compressed folding"; fi
  ;;
run)
  # a command that returns no exit code is an internal error, exit 2, never 0 (a stdlib whose CLI
  # returns a string, a fraction, nothing)
  for ret in '"done"' '0.5' 'nil' '300'; do
    mkdir -p "$tmp/badlib/parity"
    echo "return { main = function() return $ret end }" >"$tmp/badlib/parity/cli.lua"
    expect 2 '^parity: internal error: the command returned (string|number|nil), not an exit code$' -- --stdlib-dir "$tmp/badlib" version
  done
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
  # --device becomes parity.device, checked first
  echo 'print("device=" .. parity.device .. " " .. parity.load(arg[1]):device())' >"$tmp/device.lua"
  expect 0 '^device=cpu cpu$' -- run --device cpu "$tmp/device.lua" "$fx/reference/fp32.pt"
  expect 2 "^parity run: device 'cuda:99': .*CUDA device" -- run --device cuda:99 "$tmp/device.lua"
  # the return value is the exit code only when it is nothing, a boolean or a whole number 0..125
  for r in 0 1 125 true; do echo "return $r" >"$tmp/r.lua"; expect "$([[ $r == true ]] && echo 0 || echo "$r")" '^$' -- run "$tmp/r.lua"; done
  for r in '0/0' 256 1.5 -1 126 '"3"' '{}'; do
    echo "return $r" >"$tmp/r.lua"
    expect 2 "^parity run: $tmp/r.lua returned .*; a script returns nothing, true, false or a whole number 0\.\.125$" -- run "$tmp/r.lua"
  done
  "$parity" run <(echo 'io.open(arg[1], "wb"):write(string.dump(loadstring("os.exit(0)")))') "$tmp/bytecode.lua"
  expect 2 "^parity run: $tmp/bytecode.lua: precompiled bytecode is refused" -- run "$tmp/bytecode.lua"
  # environment values are validated: one line, exit 2
  expect 2 "^parity: PARITY_GC_MB must be a whole number in 1\.\.1048576, got '-1'$" -- run "$tmp/r.lua" @PARITY_GC_MB=-1
  expect 2 "^parity: PARITY_THREADS must be a whole number in 1\.\.4096, got 'two'$" -- run "$tmp/r.lua" @PARITY_THREADS=two
  expect 2 "^parity: PARITY_EXECUTOR must be off, legacy or profiling, got 'fast'$" -- run "$tmp/r.lua" @PARITY_EXECUTOR=fast
  expect 0 '^parity [0-9]' -- version @PARITY_EXECUTOR=profiling
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
gate)
  ref=$fx/reference
  expect 0 '^PASS  allclose\(rtol=0\.0001, atol=0\.0001\): 0 of 32768 logits outside$' -- gate "$ref" "$fx/port_fused"
  expect 1 '^FAIL  allclose' -- gate "$ref" "$fx/bug_rope"
  expect 1 'would pass with atol >= ' -- gate "$ref" "$fx/bug_rope"
  expect 0 '^PASS' -- gate "$ref" "$fx/bug_rope" --atol 100
  expect 2 "^parity gate: device 'cuda:99': .*CUDA device" -- gate "$ref" "$fx/port_fused" --device cuda:99
  expect 2 "^parity gate: unknown device 'tpu'" -- gate "$ref" "$fx/port_fused" --device tpu
  expect 1 'non-finite: target 2 NaN 0 Inf' -- gate "$ref" "$fx/bug_nan" --atol 1e9
  expect 1 'no tolerance would pass: NaN/Inf in the logits' -- gate "$ref" "$fx/bug_nan" --atol 1e9
  expect 0 'at bf16 on 1 x 8 tokens' -- gate "$ref" "$fx/port_fused" --dtype bf16 --batch 1 --seq 8
  expect 0 '^PASS' -- gate "$ref" "$fx/port_fused" --json "$tmp/gate.json"
  cases=$((cases + 1))
  if python3 -c 'import json,sys; g=json.load(open(sys.argv[1])); assert g["pass"] and g["dtype"]=="fp32"' "$tmp/gate.json"; then
    echo "ok   gate --json"; else failures=$((failures + 1)); echo "FAIL: gate --json"; fi
  expect 2 "^parity gate: vocab sizes differ: reference $ref has 512, target $fx/other_vocab has 256$" -- gate "$ref" "$fx/other_vocab"
  expect 2 "^parity gate: logits shapes differ: reference $ref \[2, 32, 512\], target $fx/hidden_states \[2, 32, 64\]$" -- gate "$ref" "$fx/hidden_states"
  expect 2 "^parity gate: $fx/corrupt_bundle/fp32.pt: not a loadable TorchScript file" -- gate "$ref" "$fx/corrupt_bundle"
  expect 2 "^parity gate: $fx/nope: no such file or directory$" -- gate "$ref" "$fx/nope"
  expect 2 'has no fp16 trace' -- gate "$ref" "$fx/port_fused" --dtype fp16
  expect 2 'missing TARGET' -- gate "$ref"
  expect 2 "--seq needs a number, got 'x'" -- gate "$ref" "$fx/port_fused" --seq x
  expect 2 '^parity gate: seq must be a whole number in 1\.\.131072, got -1$' -- gate "$ref" "$fx/port_fused" --seq -1
  # numbers that must never pass: NaN tolerances, sizes past their bounds, fractional counts
  expect 2 "^parity gate: --atol needs a number, got 'nan'" -- gate "$ref" "$fx/bug_rope" --atol nan
  expect 2 "^parity gate: --rtol needs a number, got 'nan'" -- gate "$ref" "$fx/bug_rope" --rtol nan
  expect 2 "^parity gate: --atol needs a number, got 'inf'" -- gate "$ref" "$fx/bug_rope" --atol inf
  expect 2 '^parity gate: atol must be a finite number >= 0, got inf$' -- gate "$ref" "$fx/bug_rope" --atol 1e999
  expect 2 '^parity gate: rtol must be a finite number >= 0, got -0\.1$' -- gate "$ref" "$fx/bug_rope" --rtol -0.1
  expect 2 '^parity gate: batch must be a whole number in 1\.\.1024, got 1\.5$' -- gate "$ref" "$fx/port_fused" --batch 1.5
  expect 2 '^parity gate: seed must be a whole number' -- gate "$ref" "$fx/port_fused" --seed -1
  expect 2 '^parity gate: 100000 tokens a sequence exceed .*reference.s max_position_embeddings \(2048, parity.json\)$' -- gate "$ref" "$fx/port_fused" --seq 100000
  expect 2 '^parity gate: seq must be a whole number in 1\.\.131072, got 1000000000$' -- gate "$ref" "$fx/port_fused" --seq 1e9
  # a forward that fails is one line: the model, the input shape and the error's last line
  expect 2 '^parity gate: .*no_vocab \(fp32\): forward on token ids \[1, 100000\] failed: .*[^ ]$' -- gate "$fx/no_vocab" "$fx/no_vocab" --seq 100000 --batch 1
  cases=$((cases + 1))
  lines=$("$parity" gate "$fx/no_vocab" "$fx/no_vocab" --seq 100000 --batch 1 2>&1 | wc -l)
  if [[ $lines -eq 1 ]]; then echo "ok   a failing forward is one line"; else failures=$((failures + 1)); echo "FAIL: a failing forward printed $lines lines"; fi
  # a manifest with vocab_size null: the vocabulary comes from the embedding weight; --vocab-size overrides
  expect 0 '^PASS' -- gate "$fx/no_vocab" "$ref"
  expect 0 '^PASS' -- gate "$ref" "$fx/port_fused" --vocab-size 100
  expect 2 '^parity gate: vocab_size must be a whole number in 1\.\.2147483647, got 0$' -- gate "$ref" "$fx/port_fused" --vocab-size 0
  expect 0 'Usage: parity gate REF TARGET' -- gate --help
  ;;
check)
  ref=$fx/reference
  common=(--prompts 2 --new-tokens 8 --cache-dir "$tmp/cache")
  expect 0 '^verdict: EQUIVALENT' -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}"
  expect 0 '^reference: from cache ' -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}"
  expect 0 'cache off' -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}" --no-cache
  # the e2e stages' teacher-forced passes run tapped; the component sweep runs none of them again
  expect 0 '^components: 24 tested in [0-9.]+ s: 0 tapped forwards' -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}" --no-cache --sweep full
  # against a cached reference: no forward of it, its own noise and captures read from the cache;
  # the adaptive sweep: the clean attentions and MLPs vouch for their projections and activation
  expect 0 '^components: 24 tested in [0-9.]+ s: 0 tapped forwards.*own noise from the cache; its captures from the cache$' -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}"
  expect 0 '^components: 14 tested in [0-9.]+ s: 0 tapped forwards.*; 10 inside clean components not tested \(--sweep full tests them\)' -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}" --sweep adaptive
  # captures past --max-capture-mb: not cached, the reference's fp32 pass runs
  expect 0 'its captures \([0-9]+ MB\) are past --max-capture-mb 0: not cached' -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}" --cache-dir "$tmp/cache0" --max-capture-mb 0
  expect 0 '^components: 24 tested in [0-9.]+ s: 1 tapped forwards' -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}" --cache-dir "$tmp/cache0" --max-capture-mb 0
  expect 2 "^parity check: --sweep must be full .* or adaptive .*, got some" -- check "$ref" "$fx/port_fused" --out "$tmp/ok" "${common[@]}" --sweep some
  # a device that is not here: one line, exit 2 (cuda:99: no GPU here, or fewer)
  expect 2 "^parity check: device 'cuda:99': .*CUDA device" -- check "$ref" "$fx/port_fused" --out "$tmp/dev" "${common[@]}" --device cuda:99
  expect 2 "^parity check: device 'cuda:99'" -- check "$ref" "$fx/port_fused" --out "$tmp/dev" "${common[@]}" --reference-device cuda:99
  expect 0 '^verdict: EQUIVALENT' -- check "$ref" "$fx/port_fused" --out "$tmp/dev" "${common[@]}" --device cpu
  expect 1 '^verdict: DIVERGENT — failed: r_p95' -- check "$ref" "$fx/bug_norm_bf16" --out "$tmp/bug" "${common[@]}"
  expect 1 '^  first divergence: model.layers.0.input_layernorm \(LlamaRMSNorm\), .*: precision: exact in fp32' -- check "$ref" "$fx/bug_norm_bf16" --out "$tmp/bug" "${common[@]}"
  expect 1 '^  first divergence: model.layers.0.input_layernorm .*: epsilon: a norm whose output is the reference.s with eps 1e-05' -- check "$ref" "$fx/bug_eps_small" --out "$tmp/bug" "${common[@]}"
  expect 1 '^  first divergence: h\.0 \(Block\), R [0-9.]+, R32 [0-9.]+, step: activation: the nonlinearity is gelu where the reference.s is gelu_tanh' -- check "$fx/noisy" "$fx/noisy_bug_gelu" --out "$tmp/bug" "${common[@]}"
  expect 0 'warning: e2e32 skipped: .*reference_bf16.pt has no fp32 trace' -- check "$ref" "$fx/reference_bf16.pt" --out "$tmp/ok" "${common[@]}"
  expect 1 '^  first divergence: model.layers.1.mlp.down_proj \(Linear\), R [0-9.]+, R32 [0-9.]+, step: scale: model.layers.1.mlp.down_proj.s weight is 1.05 x the reference.s \(static weight check\)$' -- check "$ref" "$fx/same_scale" --out "$tmp/bug" "${common[@]}"
  cases=$((cases + 1))
  if python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); f=v["first_divergence"]; assert f["reference"]=="model.layers.1.mlp.down_proj" and f["cause"]["class"]=="scale" and abs(f["cause"]["parameter"]["value"]-1.05)<1e-3 and v["suspects"]' "$tmp/bug/verdict.json"; then
    echo "ok   verdict.json has first_divergence and suspects"; else failures=$((failures + 1)); echo "FAIL: first_divergence in verdict.json"; fi
  expect 1 'FAIL  R p95 < 1.2' -- check "$ref" "$fx/bug_attn_scale" --out "$tmp/bug" "${common[@]}"
  # on a terminal (a pty from script(1)) the summary is coloured, unless NO_COLOR; piped, never
  cases=$((cases + 1))
  if script -qec "$parity report $tmp/bug" /dev/null | grep -q $'\e\[1;31mverdict: DIVERGENT' \
     && ! NO_COLOR=1 script -qec "$parity report $tmp/bug" /dev/null | grep -q $'\e\[' \
     && ! "$parity" report "$tmp/bug" | grep -q $'\e\['; then
    echo "ok   the summary is coloured on a terminal only, and not with NO_COLOR"
  else failures=$((failures + 1)); echo "FAIL: colour on a terminal"; fi
  expect 1 "FAIL  no NaN/Inf in the target's logits" -- check "$ref" "$fx/bug_nan" --out "$tmp/bug" "${common[@]}"
  expect 2 "^parity check: the reference $fx/bug_nan \(fp32\) has 2 NaN and 0 Inf in its own logits: fix the reference first$" -- check "$fx/bug_nan" "$fx/bug_nan" --out "$tmp/e" "${common[@]}"
  cases=$((cases + 1))
  if python3 -c 'import json,sys; v=json.load(open(sys.argv[1])); assert v["verdict"]=="divergent" and v["failed"] and v["cause"]["class"]' "$tmp/bug/verdict.json"; then
    echo "ok   check writes verdict.json"; else failures=$((failures + 1)); echo "FAIL: check verdict.json"; fi
  echo 'return { r_p95 = 1000, r32_p95 = 1000, kl_floor = 1000, cosine_floor = 2, top1 = 0, row_z = 1e9 }' >"$tmp/lenient.lua"
  expect 0 '^verdict: EQUIVALENT' -- check "$ref" "$fx/bug_attn_scale" --out "$tmp/bug" "${common[@]}" --thresholds "$tmp/lenient.lua"
  echo 'return { r_p95 = os.exit(0) }' >"$tmp/escape.lua"
  expect 2 "attempt to index global 'os'" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/escape.lua"
  expect 2 "^parity check: vocab sizes differ" -- check "$ref" "$fx/other_vocab" --out "$tmp/e" "${common[@]}"
  expect 2 "^parity check: logits shapes differ" -- check "$ref" "$fx/hidden_states" --out "$tmp/e" "${common[@]}"
  expect 2 "^parity check: $fx/corrupt_bundle/fp32.pt: not a loadable TorchScript file" -- check "$ref" "$fx/corrupt_bundle" --out "$tmp/e" "${common[@]}"  # the first it loads
  cases=$((cases + 1))
  if grep -q '"verdict": "error"' "$tmp/e/verdict.json"; then echo "ok   error verdict on disk"; else failures=$((failures + 1)); echo "FAIL: error verdict"; fi
  expect 2 "^parity check: $fx/gone: no such file or directory$" -- check "$fx/gone" "$fx/port_fused" --out "$tmp/e"
  expect 2 '^parity check: --dtype must be bf16 or fp16 \(the low precision under test\), or fp32 \(an fp32-only port\), got fp8$' -- check "$ref" "$fx/port_fused" --dtype fp8 --out "$tmp/e"
  # an fp32-only port: told how to check it, then checked in fp32
  expect 2 "^parity check: $fx/bug_eps_small/fp32.pt has no bf16 trace, only fp32: check an fp32-only port with --dtype fp32$" -- check "$ref" "$fx/bug_eps_small/fp32.pt" --out "$tmp/e" "${common[@]}"
  expect 1 '^  first divergence: model.layers.0.input_layernorm \(LlamaRMSNorm\), R -, R32 [0-9.e-]*, step: epsilon' -- check "$ref" "$fx/bug_eps_small/fp32.pt" --dtype fp32 --out "$tmp/e" "${common[@]}"
  expect 2 '^parity check: new_tokens must be a whole number in 1\.\.4096, got 0$' -- check "$ref" "$fx/port_fused" --new-tokens 0 --out "$tmp/e"
  expect 2 '^parity check: new_tokens must be a whole number in 1\.\.4096, got 100000$' -- check "$ref" "$fx/port_fused" --new-tokens 100000 --out "$tmp/e"
  expect 2 '^parity check: 3016 tokens a sequence exceed' -- check "$ref" "$fx/port_fused" --prompt-len 3000 --out "$tmp/e"
  expect 2 "^parity check: --topk needs a number, got 'nan'" -- check "$ref" "$fx/port_fused" --topk nan --out "$tmp/e"
  # shared recipes: text only, safe globals, bounded, and what they return is data
  printf '%s' 'return { r_p95 = 0/0 }' >"$tmp/nan.lua"
  expect 2 "^parity check: thresholds file $tmp/nan.lua: threshold 'r_p95' must be a finite number >= 0, got nan$" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/nan.lua"
  "$parity" run <(echo 'io.open(arg[1], "wb"):write(string.dump(loadstring("return { r_p95 = 1000 }")))') "$tmp/bytecode.lua"
  expect 2 "precompiled bytecode is refused" -- check "$ref" "$fx/bug_attn_scale" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/bytecode.lua"
  echo 'while true do end' >"$tmp/loop.lua"
  expect 2 "^parity check: thresholds file $tmp/loop.lua: instruction budget of 100000 exceeded" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/loop.lua" @PARITY_SANDBOX_INSTRUCTIONS=100000
  echo 'local s = ("x"):rep(1e9) return {}' >"$tmp/mem.lua"
  expect 2 "thresholds file $tmp/mem.lua: memory cap of 64 MB exceeded" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/mem.lua"
  echo 'return { r_p95 = (("a"):rep(30000) .. "b"):find(".-.-.-.-c") and 1 or 2 }' >"$tmp/pattern.lua"
  expect 2 "^parity: thresholds file $tmp/pattern.lua ran over its 1 s wall-clock limit" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/pattern.lua" @PARITY_SANDBOX_SECONDS=1
  cases=$((cases + 1))
  if grep -q '"verdict": "error"' "$tmp/e/verdict.json"; then echo "ok   a run killed by the backstop leaves an error verdict"; else failures=$((failures + 1)); echo "FAIL: backstop verdict"; fi
  expect 2 '^parity check: PARITY_SANDBOX_MB must be a whole number in 1\.\.65536, got .-1.$' -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/nan.lua" @PARITY_SANDBOX_MB=-1
  # results a user can trust after a failure: no earlier verdict survives an error
  expect 0 '^verdict: EQUIVALENT' -- check "$ref" "$fx/port_fused" --out "$tmp/stale" "${common[@]}"
  expect 2 'unknown option --frobnicate' -- check "$ref" "$fx/port_fused" --out "$tmp/stale" --frobnicate
  cases=$((cases + 1))
  if grep -q '"verdict": "error"' "$tmp/stale/verdict.json" && grep -q 'usage error: unknown option --frobnicate' "$tmp/stale/verdict.json"; then
    echo "ok   a usage error replaces the earlier verdict"; else failures=$((failures + 1)); echo "FAIL: stale verdict after a usage error"; fi
  touch "$tmp/stale/verdict.json.tmp.999999999" "$tmp/stale/e2e.json.tmp.$$"
  expect 0 '^verdict: EQUIVALENT' -- check "$ref" "$fx/port_fused" --out "$tmp/stale" "${common[@]}"
  cases=$((cases + 1))
  if [[ ! -e $tmp/stale/verdict.json.tmp.999999999 && -e $tmp/stale/e2e.json.tmp.$$ ]]; then
    echo "ok   temporary files of dead runs are cleaned, a live process's are kept"; else failures=$((failures + 1)); echo "FAIL: stale temporary files"; fi
  expect 0 'Usage: parity check REF TARGET' -- check --help
  # progress goes to stderr (plain lines when not a terminal), never with --quiet
  cases=$((cases + 1))
  err=$(PARITY_PROGRESS_AFTER=0 "$parity" check "$ref" "$fx/same_scale" --out "$tmp/p" "${common[@]}" 2>&1 >/dev/null)
  quiet=$(PARITY_PROGRESS_AFTER=0 "$parity" check "$ref" "$fx/same_scale" --out "$tmp/p" "${common[@]}" --quiet 2>&1 >/dev/null)
  if grep -qE '^components ([0-9]+)/\1  [0-9.]+ s$' <<<"$err" && grep -qE '^smoke ([0-9]+)/\1  ' <<<"$err" && [[ -z $quiet ]]; then
    echo "ok   progress on stderr, none with --quiet"; else failures=$((failures + 1)); echo "FAIL: progress: [$err] quiet: [$quiet]"; fi
  expect 2 "PARITY_PROGRESS_AFTER must be a finite number" -- check "$ref" "$fx/port_fused" --out "$tmp/p" "${common[@]}" @PARITY_PROGRESS_AFTER=soon
  ;;
foreign)
  # a foreign engine (tests/fixtures/tiny_engine.py: numpy, no TorchScript) with and without a
  # planted FFN bug at layer 1: its saved logits through check and gate, its dumps through diff
  ref=$fx/reference
  engine=(/usr/bin/python3 "$(dirname "$0")/../fixtures/tiny_engine.py" "$fx/engine" "$tmp/in.safetensors")
  common=(--prompts 2 --new-tokens 8 --cache-dir "$tmp/cache")
  expect 0 '^parity inputs: wrote .*in.safetensors: input_ids \[2, 24\] \(16 prompt \+ 8 new tokens a sequence\)' -- inputs "$ref" --out "$tmp/in.safetensors" "${common[@]}"
  ENGINE_DUMP_DIR=$tmp/clean "${engine[@]}" --logits "$tmp/clean.npy"
  ENGINE_DUMP_DIR=$tmp/bug "${engine[@]}" --logits "$tmp/bug.npy" --bug ffn_scale:1
  ENGINE_DUMP_DIR=$tmp/bug_pos5 ENGINE_DUMP_POS=5 "${engine[@]}" --logits "$tmp/bug_pos5.npy" --bug ffn_scale:1
  expect 0 '^parity dump: wrote 13 tensors' -- dump "$ref" --inputs "$tmp/in.safetensors" --out "$tmp/ref"
  expect 0 '^verdict: EQUIVALENT' -- diff "$tmp/ref" "$tmp/clean"
  # a comparison covers what the reference dumped (every layer, the logits) unless narrowed
  mkdir -p "$tmp/embonly" && cp "$tmp/clean"/emb.* "$tmp/embonly/"
  expect 2 '^incomplete: .*h0, h1, logits' -- diff "$tmp/ref" "$tmp/embonly"
  expect 0 '^verdict: EQUIVALENT' -- diff "$tmp/ref" "$tmp/embonly" --only emb
  expect 2 'only: pattern "\^\.-\.-\.-\.-x" has 4 repetitions' -- diff "$tmp/ref" "$tmp/embonly" --only '^.-.-.-.-x'
  # the Python reference dumper (hooks) writes what parity dump (taps) does, on the eager model
  /usr/bin/python3 "$(dirname "$0")/../../scripts/parity_dump.py" --module "$(dirname "$0")/../fixtures/tiny_llama.py:reference" \
    --inputs "$tmp/in.safetensors" --out "$tmp/pyref" >/dev/null
  # (bit for bit on LibTorch 1.13; eager and traced round a little apart on 2.x)
  tiny='(0|[0-9.]+e-0[6-9]|[0-9.]+e-[1-9][0-9])'
  expect 0 "^  h1_postattn +$tiny +1\.000000 +$tiny " -- diff "$tmp/ref" "$tmp/pyref"
  expect 0 "^  post_norm +$tiny +1\.000000 +$tiny " -- diff "$tmp/ref" "$tmp/pyref"
  expect 1 '^localized: h1_ffnout: layer 1.s FFN' -- diff "$tmp/ref" "$tmp/bug"
  expect 1 '^first past threshold: h1_ffnout at position 0 ' -- diff "$tmp/ref" "$tmp/bug"
  expect 1 '^localized: h1_ffnout: layer 1.s FFN' -- diff "$tmp/ref" "$tmp/bug_pos5" --pos 5
  expect 1 '^  h1_ffnout .* 0\.500 ' -- diff "$tmp/ref" "$tmp/bug_pos5" --pos 5   # the FFN at half its magnitude
  expect 0 '^verdict: EQUIVALENT' -- check "$ref" "$tmp/clean.npy" --inputs "$tmp/in.safetensors" --out "$tmp/c" "${common[@]}"
  expect 0 'warning: smoke skipped: it needs its own greedy decoding.*saved logits' -- check "$ref" "$tmp/clean.npy" --inputs "$tmp/in.safetensors" --out "$tmp/c" "${common[@]}"
  expect 1 '^verdict: DIVERGENT — failed: r_p95' -- check "$ref" "$tmp/bug.npy" --inputs "$tmp/in.safetensors" --out "$tmp/c" "${common[@]}"
  expect 0 '^PASS.*rtol=0.0001' -- gate "$ref" "$tmp/clean.npy" --inputs "$tmp/in.safetensors"   # fp32 by default
  expect 1 '^FAIL  allclose\(rtol=0.02' -- gate "$ref" "$tmp/clean.npy" --inputs "$tmp/in.safetensors" --dtype bf16
  expect 1 '^FAIL' -- gate "$ref" "$tmp/bug.npy" --inputs "$tmp/in.safetensors"
  # bad input: exit 2 naming the file
  expect 2 'pass --inputs FILE, the token ids its engine ran' -- gate "$ref" "$tmp/clean.npy"
  expect 2 'in.safetensors: its sequences are not the greedy continuation of .*bug_eps' -- check "$fx/bug_eps" "$tmp/clean.npy" --inputs "$tmp/in.safetensors" --out "$tmp/c" "${common[@]}"
  expect 2 'pass --inputs FILE, the file parity inputs wrote' -- check "$ref" "$tmp/clean.npy" --out "$tmp/c" "${common[@]}"
  "$parity" inputs "$ref" --out "$tmp/in3.safetensors" --prompts 3 --new-tokens 8 --cache-dir "$tmp/cache" --quiet >/dev/null
  expect 2 'clean.npy: logits \[2, 24, 512\] are not for this run.s 3 sequences' -- check "$ref" "$tmp/clean.npy" --inputs "$tmp/in3.safetensors" --out "$tmp/c" --cache-dir "$tmp/cache"
  expect 2 'in.safetensors holds 8 new tokens a sequence .*--new-tokens 4 disagrees' -- check "$ref" "$tmp/clean.npy" --inputs "$tmp/in.safetensors" --new-tokens 4 --out "$tmp/c"
  rm "$tmp/bug/h1_preffn.json"
  expect 2 "^parity diff: $tmp/bug/h1_preffn.bin: a raw array needs its sidecar $tmp/bug/h1_preffn.json" -- diff "$tmp/ref" "$tmp/bug"
  rm "$tmp/bug/h1_preffn.bin"
  expect 2 "^parity diff: $tmp/bug: no dump of h1_preffn \(the reference.s is $tmp/ref/h1_preffn.npy" -- diff "$tmp/ref" "$tmp/bug"
  printf '{"dtype": "float32", "shape": [2, 24, 32]}' >"$tmp/clean/h0.json"
  expect 2 "^parity diff: $tmp/clean/h0.bin: 12288 bytes, but $tmp/clean/h0.json says float32 \[2, 24, 32\] = 6144 bytes" -- diff "$tmp/ref" "$tmp/clean"
  head -c 6144 "$tmp/clean/h0.bin" >"$tmp/h0" && mv "$tmp/h0" "$tmp/clean/h0.bin"
  expect 2 "^parity diff: h0: shapes differ: reference $tmp/ref/h0.npy \[2, 24, 64\], target $tmp/clean/h0.bin \[2, 24, 32\]" -- diff "$tmp/ref" "$tmp/clean"
  expect 2 "^parity diff: $tmp/none: no such file or directory" -- diff "$tmp/ref" "$tmp/none"
  expect 0 'Usage: parity diff REF_DUMP TARGET_DUMP' -- diff --help
  # the matrix: the reference dumped by parity, the engine with its dump directory and position
  # in its environment; one report per failing pair
  cat >"$tmp/matrix.lua" <<EOF
local engine = "/usr/bin/python3 $(cd "$(dirname "$0")/../fixtures" && pwd)/tiny_engine.py $(cd "$fx" && pwd)/engine {inputs} --logits {dump}.npy"
local reference = { command = "{parity} dump $(cd "$ref" && pwd) --inputs {inputs} --out {dump}" }
return { entries = {
  { model = "clean", prompts = { "in.safetensors" }, reference = reference,
    engine = { command = engine, env = { ENGINE_DUMP_DIR = "{dump}" } } },
  { model = "ffn_bug", prompts = { "in.safetensors" }, pos = 3, reference = reference,
    engine = { command = engine .. " --bug ffn_scale:1", env = { ENGINE_DUMP_DIR = "{dump}", ENGINE_DUMP_POS = "{pos}" } } },
  { model = "broken", prompts = { "in.safetensors" }, reference = reference, engine = { command = "echo no engine here >&2; false" } },
} }
EOF
  expect 0 '^  clean +p0 +PASS$' -- matrix "$tmp/matrix.lua" --filter clean --reports "$tmp/reports"
  expect 1 '^  ffn_bug +p0 +FAIL +first past threshold h1_ffnout at position 3; localized: h1_ffnout' -- matrix "$tmp/matrix.lua" --filter ffn --reports "$tmp/reports"
  expect 2 "^  broken +p0 +ERROR +the engine command failed \\(exit 1\\): echo no engine here >&2; false: no engine here \\(log: " -- matrix "$tmp/matrix.lua" --reports "$tmp/reports"
  expect 2 '^3 pairs: 1 pass, 1 fail, 1 error$' -- matrix "$tmp/matrix.lua" --reports "$tmp/reports"
  expect 2 "^JUnit: $tmp/reports/junit.xml$" -- matrix "$tmp/matrix.lua" --reports "$tmp/reports"
  # one JUnit suite a (model, prompt), valid against the schema CI reporters read
  cases=$((cases + 1))
  xsd=$(cd "$(dirname "$0")/../data" && pwd)/junit.xsd
  j=$tmp/reports/junit.xml
  if xmllint --noout --schema "$xsd" "$j" 2>/dev/null && [[ $(grep -c '<testsuite ' "$j") -eq 3 ]] \
     && grep -q '<testsuite name="parity matrix ffn_bug prompt 0" tests="[0-9]*" failures="[1-9]' "$j" \
     && grep -q '<testcase classname="parity.matrix.ffn_bug" name="h1_ffnout" time="0"><failure message="rel L2 [^"]*" type="first divergence"' "$j" \
     && grep -q '<testsuite name="parity matrix clean prompt 0" tests="[1-9][0-9]*" failures="0" errors="0"' "$j" \
     && grep -q '<testsuite name="parity matrix broken prompt 0" tests="1" failures="0" errors="1"' "$j"; then
    echo "ok   the matrix's junit.xml: one valid suite a pair"; else failures=$((failures + 1)); echo "FAIL: the matrix's junit.xml"; sed 's/^/    /' "$j" | head -40; fi
  cases=$((cases + 1))
  if grep -q '^localized: h1_ffnout' "$tmp/reports/ffn_bug__p0.diff" && [[ -e $tmp/reports/ffn_bug__p0.json && ! -e $tmp/reports/clean__p0.diff ]]; then
    echo "ok   a report for the failing pair only"; else failures=$((failures + 1)); echo "FAIL: matrix reports"; fi
  echo 'return { entries = { { model = "x y" } } }' >"$tmp/bad_matrix.lua"
  expect 2 'bad_matrix.lua: entry 1: model must be a name' -- matrix "$tmp/bad_matrix.lua"
  expect 2 "no entry's model matches --filter nothing" -- matrix "$tmp/matrix.lua" --filter nothing --reports "$tmp/reports"
  ;;
calibrate)
  ref=$fx/reference
  common=(--prompts 2 --new-tokens 8 --cache-dir "$tmp/cache")
  expect 0 '^verdict: EQUIVALENT' -- check "$ref" "$fx/port_fused" --out "$tmp/good1" "${common[@]}"
  expect 0 '^verdict: (EQUIVALENT|INCONCLUSIVE)' -- check "$ref" "$fx/port_interleaved" --out "$tmp/good2" "${common[@]}"
  expect 1 '^verdict: DIVERGENT' -- check "$ref" "$fx/bug_eps_small" --out "$tmp/bug1" "${common[@]}"
  expect 0 'Usage: parity calibrate RESULTS_DIR\.\.\. --out RECIPE\.lua' -- help calibrate
  expect 2 '^parity calibrate: missing --out RECIPE.lua' -- calibrate "$tmp/good1" "$tmp/good2"
  expect 2 '^parity calibrate: missing RESULTS_DIR\.\.\.' -- calibrate --out "$tmp/r.lua"
  expect 2 "^parity calibrate: good run $tmp/nowhere: no verdict.json there" -- calibrate "$tmp/nowhere" --out "$tmp/r.lua"
  expect 2 '^parity calibrate: calibrate takes good runs.* or --reference REF, not both' -- calibrate "$tmp/good1" --reference "$ref" --out "$tmp/r.lua"
  expect 2 '^parity calibrate: --seeds sets the null runs. checks: it goes with --reference REF' -- calibrate "$tmp/good1" --seeds 3 --out "$tmp/r.lua"
  expect 2 '^parity calibrate: --margin' -- calibrate "$tmp/good1" "$tmp/good2" --margin 0.5 --out "$tmp/r.lua"
  expect 2 '^parity calibrate: --holdout' -- calibrate "$tmp/good1" "$tmp/good2" --holdout 2 --out "$tmp/r.lua"
  [[ ! -e $tmp/r.lua ]] || { failures=$((failures + 1)); echo "FAIL: a refused calibration wrote its recipe"; }
  expect 0 '^known bugs under this recipe: 1 of 1 fail' -- calibrate "$tmp/good1" "$tmp/good2" --holdout 1 --bugs "$tmp/bug1" --out "$tmp/r.lua"
  expect 0 '^  r_p95 .* 2  R p95 \(e2e\): q ' -- calibrate "$tmp/good1" "$tmp/good2" --out "$tmp/r.lua"
  expect 1 "^  thresholds: recipe $tmp/r.lua \(sha256 [0-9a-f]{12}\), calibrated .* on 2 good runs" -- check "$ref" "$fx/bug_eps_small" --out "$tmp/bug1" "${common[@]}" --recipe "$tmp/r.lua"
  # carried elsewhere (another directory, another process): the same verdict, the same figures
  mkdir -p "$tmp/elsewhere/team" && cp "$tmp/r.lua" "$tmp/elsewhere/team/recipe.lua"
  expect 1 '^verdict: DIVERGENT' -- check "$ref" "$fx/bug_eps_small" --out "$tmp/bug2" "${common[@]}" --recipe "$tmp/elsewhere/team/recipe.lua"
  cases=$((cases + 1))
  if python3 -c 'import json,sys; a,b=(json.load(open(p+"/verdict.json")) for p in sys.argv[1:3]); assert a["recipe"]["sha256"]==b["recipe"]["sha256"] and a["verdict"]==b["verdict"] and a["failed"]==b["failed"] and a["thresholds"]==b["thresholds"] and [c["value"] for c in a["criteria"]]==[c["value"] for c in b["criteria"]]' "$tmp/bug1" "$tmp/bug2"; then
    echo "ok   a recipe carried elsewhere gives the same verdict"; else failures=$((failures + 1)); echo "FAIL: a recipe carried elsewhere"; fi
  expect 2 "^parity check: recipe $tmp/r.lua: calibrated on checks of a bf16 target against bf16 noise, this check is of a fp16" -- check "$ref" "$fx/bug_eps_small" --out "$tmp/bug1" "${common[@]}" --recipe "$tmp/r.lua" --dtype fp16
  sed '0,/r_p95 = 1\./s//r_p95 = 2./' "$tmp/r.lua" >"$tmp/edited.lua"
  expect 2 "^parity check: recipe $tmp/edited.lua: its content does not match its sha256" -- check "$ref" "$fx/bug_eps_small" --out "$tmp/bug1" "${common[@]}" --recipe "$tmp/edited.lua"
  echo 'return { r_p95 = 2 }' >"$tmp/thresholds.lua"
  expect 2 "^parity check: recipe $tmp/thresholds.lua: not a recipe \(no parity_recipe schema field\): a thresholds file goes to --thresholds" -- check "$ref" "$fx/bug_eps_small" --out "$tmp/bug1" "${common[@]}" --recipe "$tmp/thresholds.lua"
  expect 0 '^parity calibrate: 2 null runs of .*reference' -- calibrate --reference "$ref" --seeds 2 --out "$tmp/null.lua" "${common[@]}"
  expect 0 '^held out 1 at a time \(2 splits\)' -- calibrate --reference "$ref" --seeds 2 --out "$tmp/null.lua" "${common[@]}"
  ;;
downstream)
  lm=$(dirname "$0")/../data/lmeval
  expect 0 'Usage: parity downstream REF_RESULTS TARGET_RESULTS' -- help downstream
  expect 0 '^  pass         counting acc .* 0\.8333 -> 0\.8333  regression \+0\.0000 \(95% \+0\.0000\.\.\+0\.0000\)  paired over 150 documents' -- downstream "$lm/reference" "$lm/port_bf16" --out "$tmp/d"
  expect 0 "^downstream: EQUIVALENT   \($tmp/d/downstream.json\)" -- downstream "$lm/reference" "$lm/port_bf16" --out "$tmp/d"
  expect 1 '^downstream: DIVERGENT — 1 past the tolerance' -- downstream "$lm/reference" "$lm/port_bug" --out "$tmp/d"
  mkdir -p "$tmp/unpaired/r" "$tmp/unpaired/t" && cp "$lm"/reference/*/results_*.json "$tmp/unpaired/r/" && cp "$lm"/port_bf16/*/results_*.json "$tmp/unpaired/t/"
  expect 3 'inconclusive counting acc .*unpaired: each run.s standard error; about [0-9]+ samples would decide it' -- downstream "$tmp/unpaired/r" "$tmp/unpaired/t" --out "$tmp/d"
  expect 0 '^downstream: EQUIVALENT' -- downstream "$tmp/unpaired/r" "$tmp/unpaired/t" --out "$tmp/d" --tolerance 0.1
  expect 2 "^parity downstream: downstream: the target's results $tmp/nowhere: no such file or directory" -- downstream "$lm/reference" "$tmp/nowhere"
  expect 2 '^parity downstream: --tolerance' -- downstream "$lm/reference" "$lm/port_bf16" --tolerance 2
  expect 2 '^parity check: --downstream takes REF_RESULTS TARGET_RESULTS' -- check "$fx/reference" "$fx/port_fused" --downstream "$lm/reference"
  expect 1 '^  cause: downstream: counting.s acc regresses by 0\.26' -- check "$fx/reference" "$fx/port_fused" --prompts 2 --new-tokens 8 --cache-dir "$tmp/cache" --out "$tmp/c" --downstream "$lm/reference" "$lm/port_bug"
  ;;
hardening)
  # issue 19: what an attacker or a careless user hands parity ends in one line and exit 2, and
  # nothing they hand it forges a pass
  ref=$fx/reference
  common=(--prompts 2 --new-tokens 8 --cache-dir "$tmp/cache")
  # recursion through built-ins that call back into Lua, from every kind of shared file
  recurse='local d = 0 local function f(s) d = d + 1 if d >= 1000 then return "" end return (s:gsub(".", f)) end f("a")'
  echo "$recurse return {}" >"$tmp/recurse.lua"
  expect 2 "^parity check: thresholds file $tmp/recurse.lua: $tmp/recurse.lua:1: callbacks nest deeper than 100 levels" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/recurse.lua"
  expect 2 "^parity check: mapping file $tmp/recurse.lua: $tmp/recurse.lua:1: callbacks nest deeper" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --mapping "$tmp/recurse.lua"
  "$parity" inputs "$ref" --out "$tmp/in.safetensors" "${common[@]}" --quiet >/dev/null
  "$parity" dump "$ref" --inputs "$tmp/in.safetensors" --out "$tmp/ref" >/dev/null
  expect 2 "^parity diff: name mapping $tmp/recurse.lua: $tmp/recurse.lua:1: callbacks nest deeper" -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/recurse.lua"
  echo "$recurse return { entries = {} }" >"$tmp/recurse_matrix.lua"
  expect 2 "^parity matrix: matrix file $tmp/recurse_matrix.lua: $tmp/recurse_matrix.lua:1: callbacks nest deeper" -- matrix "$tmp/recurse_matrix.lua"
  echo 'return (" "):rep(5000):byte(1, -1)' >"$tmp/many.lua"
  expect 2 "^parity check: thresholds file $tmp/many.lua: returns 5000 values; at most 100" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --thresholds "$tmp/many.lua"
  # JSON nested past any use: the manifest of a bundle, a matrix file
  cp -r "$ref" "$tmp/deep"
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); s=json.dumps(m); open(sys.argv[1],"w").write(s[:-1] + ", \"extra\": " + "["*100000 + "]"*100000 + "}")' "$tmp/deep/parity.json"
  expect 2 "^parity tree: $tmp/deep/parity.json: JSON nests deeper than" -- tree "$tmp/deep"
  expect 2 "^parity gate: $tmp/deep/parity.json: JSON nests deeper than" -- gate "$tmp/deep" "$fx/port_fused"
  expect 2 "^parity check: $tmp/deep/parity.json: JSON nests deeper than" -- check "$tmp/deep" "$fx/port_fused" --out "$tmp/e" "${common[@]}"
  python3 -c 'print("{\"entries\": " + "["*50000 + "]"*50000 + "}")' >"$tmp/deep_matrix.json"
  expect 2 "^parity matrix: $tmp/deep_matrix.json: JSON nests deeper than" -- matrix "$tmp/deep_matrix.json"
  # name patterns the host applies: bounded in length, repetitions and replacement, and checked
  lua_pat=$(printf '.-%.0s' $(seq 150))
  echo "return { [\"^$lua_pat\" .. \"X\"] = \"y\" }" >"$tmp/slow_names.lua"
  expect 2 "^parity diff: name mapping $tmp/slow_names.lua: pattern .* is 302 characters long; at most 200" -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/slow_names.lua"
  echo 'return { ["^.-.-.-.-X"] = "y" }' >"$tmp/slow_names.lua"
  expect 2 "^parity diff: name mapping $tmp/slow_names.lua: pattern .* has 4 repetitions" -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/slow_names.lua"
  echo 'return { ["^.*$"] = ("%0"):rep(1.2e7) }' >"$tmp/big_names.lua"
  expect 2 "^parity diff: name mapping $tmp/big_names.lua: pattern .* has a replacement of 24000000 characters; at most 200" -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/big_names.lua"
  echo 'return { ["^(abc"] = "x" }' >"$tmp/bad_names.lua"
  expect 2 "^parity diff: name mapping $tmp/bad_names.lua: pattern .* is not a Lua pattern \(unfinished capture\)" -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/bad_names.lua"
  echo 'return { ["^" .. (".?"):rep(28) .. ("."):rep(28) .. "x$"] = "y" }' >"$tmp/slow_names.lua"
  expect 2 "^parity diff: name mapping $tmp/slow_names.lua: pattern .* has 28 repetitions \(\* \+ - \?\)" -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/slow_names.lua"
  echo 'return { ["^x%1"] = "y" }' >"$tmp/bad_names.lua"
  expect 2 "^parity diff: name mapping $tmp/bad_names.lua: pattern .* is not a Lua pattern \(%1 refers to no closed capture\)" -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/bad_names.lua"
  echo 'return { ["^(h)(%d+)$"] = "%1%.%2" }' >"$tmp/ok_names.lua"
  expect 0 '^  h\.0 ' -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/ok_names.lua"
  echo 'return { ["^h(%d+)$"] = "layer%2" }' >"$tmp/bad_names.lua"
  expect 2 "^parity diff: name mapping $tmp/bad_names.lua: pattern .* has %2 in its replacement, which names no capture" -- diff "$tmp/ref" "$tmp/ref" --names "$tmp/bad_names.lua"
  # mapping values checked against the models, before any work
  echo 'return { { reference = "model.layers.{i}.self_attn.q_proj", target = "model.layers.{i}.self_attn.q_proj", interleave = { head_dim = 16, rows = 2^60 } } }' >"$tmp/rows.lua"
  expect 2 "^parity check: mapping file $tmp/rows.lua: entry 1: interleave.rows must be a multiple of head_dim, at most 2\^24" -- check "$ref" "$fx/port_reorder" --out "$tmp/e" "${common[@]}" --mapping "$tmp/rows.lua"
  qkv='reference = { "model.layers.{i}.self_attn.q_proj", "model.layers.{i}.self_attn.k_proj", "model.layers.{i}.self_attn.v_proj" }, target = "blocks.{i}.attn.qkv_proj", transform = "concat"'
  echo "return { { $qkv, interleave = { head_dim = 16, rows = 2^20, parts = { 1 } } } }" >"$tmp/rows.lua"
  expect 2 "^parity check: the mapping entry pairing model.layers.0.self_attn.q_proj\+.* with blocks.0.attn.qkv_proj: interleave.rows = 1048576, but the tensor has 64 rows" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --mapping "$tmp/rows.lua"
  # a mapping given between identical trees is used, not ignored
  echo 'return { { reference = "model.layers.{i}.self_attn.q_proj", target = "model.layers.{i}.self_attn.q_proj", interleave = { head_dim = 16, rows = 2^20 } } }' >"$tmp/same_rows.lua"
  expect 2 "^parity check: the mapping entry pairing model.layers.0.self_attn.q_proj with model.layers.0.self_attn.q_proj: interleave.rows = 1048576, but the tensor has 64 rows" -- check "$ref" "$ref" --out "$tmp/e" "${common[@]}" --mapping "$tmp/same_rows.lua"
  echo "return { { $qkv, interleave = { head_dim = 6, parts = { 1 } } } }" >"$tmp/hd.lua"
  expect 2 "^parity check: the mapping entry pairing .*: interleave.head_dim = 6 does not divide the 64 rows" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --mapping "$tmp/hd.lua"
  echo 'local t = {} for i = 1, 2000 do t[i] = { reference = "model.norm", target = "final_norm" } end return t' >"$tmp/dups.lua"
  expect 2 "^parity check: mapping file $tmp/dups.lua: entry 2: pairs 'model.norm' again \(entry 1 pairs it already\)" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --mapping "$tmp/dups.lua"
  echo 'local r = {} for i = 1, 9000 do r[i] = "model.norm" end return { { reference = r, target = "final_norm", transform = "concat" } }' >"$tmp/wide.lua"
  expect 2 "^parity check: mapping file $tmp/wide.lua: entry 1: 9000 reference paths; at most 64" -- check "$ref" "$fx/port_fused" --out "$tmp/e" "${common[@]}" --mapping "$tmp/wide.lua"
  expect 2 "^parity gate: unexpected argument '3'" -- gate $(seq 9000)
  # what a forward needs, not only its logits; token ids from a file within the same bounds
  expect 2 "^parity check: 1024 x 2040 tokens need about [0-9.]+ GB \(.* of attention scores and activations a forward\), more than the [0-9.]+ GB this machine has available" -- check "$ref" "$fx/port_fused" --prompts 1024 --prompt-len 2000 --new-tokens 40 --out "$tmp/e" --no-cache
  cat >"$tmp/ids.lua" <<'LUA'
local t = parity.core and parity.core.tensors or require("parity.core").tensors
t.save(arg[1] .. "/rows.safetensors", { input_ids = torch.zeros(2000, 4, { dtype = "int64" }) })
t.save(arg[1] .. "/bool.safetensors", { input_ids = torch.zeros(2, 4, { dtype = "bool" }) })
t.save(arg[1] .. "/abc.safetensors", { input_ids = torch.zeros(2, 24, { dtype = "int64" }) }, { prompt_len = "abc" })
t.save(arg[1] .. "/hex.safetensors", { input_ids = torch.zeros(2, 24, { dtype = "int64" }) }, { prompt_len = "0x2" })
LUA
  "$parity" run "$tmp/ids.lua" "$tmp"
  expect 2 "^parity gate: $tmp/rows.safetensors: rows of token ids must be a whole number in 1\.\.1024, got 2000$" -- gate "$ref" "$fx/port_fused" --inputs "$tmp/rows.safetensors"
  expect 2 "^parity gate: $tmp/bool.safetensors: token ids must be a non-empty integer \[batch, seq\] tensor, got bool" -- gate "$ref" "$fx/port_fused" --inputs "$tmp/bool.safetensors"
  expect 2 "^parity check: $tmp/abc.safetensors: its metadata's prompt_len must be a whole number .*got \"abc\"" -- check "$ref" "$fx/port_fused" --inputs "$tmp/abc.safetensors" --out "$tmp/e" "${common[@]}"
  expect 2 "^parity check: $tmp/hex.safetensors: its metadata's prompt_len must be a whole number .*got \"0x2\"" -- check "$ref" "$fx/port_fused" --inputs "$tmp/hex.safetensors" --out "$tmp/e" "${common[@]}"
  expect 2 "^parity gate: --seq needs a number, got '0x2'" -- gate "$ref" "$fx/port_fused" --seq 0x2
  expect 2 "^parity gate: --seq needs a number, got ' 2'" -- gate "$ref" "$fx/port_fused" --seq ' 2'
  cp -r "$ref" "$tmp/huge_vocab"
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); m["vocab_size"]=1e300; json.dump(m, open(sys.argv[1],"w"))' "$tmp/huge_vocab/parity.json"
  expect 2 "^parity gate: $tmp/huge_vocab/parity.json: vocab_size must be a whole number in 1\.\.2147483647, got 1e\+300$" -- gate "$tmp/huge_vocab" "$fx/port_fused"
  cp -r "$ref" "$tmp/num_manifest" && echo 3 >"$tmp/num_manifest/parity.json"
  expect 2 "^parity gate: $tmp/num_manifest/parity.json: a manifest is a JSON object, got number$" -- gate "$tmp/num_manifest" "$fx/port_fused"
  cp -r "$ref" "$tmp/bad_config"
  python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); m["config"]["max_position_embeddings"]="x"; json.dump(m, open(sys.argv[1],"w"))' "$tmp/bad_config/parity.json"
  expect 2 "^parity gate: $tmp/bad_config/parity.json: config.max_position_embeddings must be a whole number, got string$" -- gate "$tmp/bad_config" "$fx/port_fused"
  # empty paths never mean /
  expect 2 "^parity check: --out needs a value, got an empty one" -- check "$ref" "$fx/port_fused" --out ''
  expect 2 "^parity check: --cache-dir needs a value, got an empty one" -- check "$ref" "$fx/port_fused" --out "$tmp/e" --cache-dir ''
  expect 2 "^parity dump: --out needs a value, got an empty one" -- dump "$ref" --inputs "$tmp/in.safetensors" --out ''
  expect 2 "^parity check: an empty argument" -- check "" "$fx/port_fused" --out "$tmp/e"
  # the reference cache: an entry proves it is this key's, a directory others can write is not used
  expect 1 '^verdict: DIVERGENT' -- check "$ref" "$fx/bug_rope" --out "$tmp/c1" --prompts 2 --new-tokens 8 --cache-dir "$tmp/c1cache"
  expect 0 '^verdict: EQUIVALENT' -- check "$fx/bug_rope" "$fx/bug_rope" --out "$tmp/c2" --prompts 2 --new-tokens 8 --cache-dir "$tmp/c2cache"
  entry=$(ls "$tmp/c1cache"/*.safetensors | grep -v _)  # the outputs' (not _components_, _captures_)
  cp "$(ls "$tmp/c2cache"/*.safetensors | grep -v _)" "$entry"
  expect 1 'the cache entry was ignored: written for other inputs' -- check "$ref" "$fx/bug_rope" --out "$tmp/c1" --prompts 2 --new-tokens 8 --cache-dir "$tmp/c1cache"
  echo garbage >"$entry"
  expect 1 '^verdict: DIVERGENT' -- check "$ref" "$fx/bug_rope" --out "$tmp/c1" --prompts 2 --new-tokens 8 --cache-dir "$tmp/c1cache"
  # another reference's captures under this key are not this reference's: ignored, its pass runs
  captures=$(ls "$tmp/c1cache"/*_captures_*.safetensors)
  cp "$(ls "$tmp/c2cache"/*_captures_*.safetensors)" "$captures"
  expect 1 "^reference cache: $captures ignored: written for other inputs" -- check "$ref" "$fx/bug_rope" --out "$tmp/c1" --prompts 2 --new-tokens 8 --cache-dir "$tmp/c1cache"
  chmod 0777 "$tmp/c1cache"
  expect 1 "reference cache off: $tmp/c1cache: writable by others" -- check "$ref" "$fx/bug_rope" --out "$tmp/c1" --prompts 2 --new-tokens 8 --cache-dir "$tmp/c1cache"
  touch "$tmp/afile"
  expect 0 "reference cache off: $tmp/afile/cache: cannot create: Not a directory" -- check "$ref" "$fx/port_fused" --out "$tmp/c3" --prompts 2 --new-tokens 8 --cache-dir "$tmp/afile/cache"
  ;;
usability)
  # issue 22: errors that say what to do
  ref=$fx/reference
  common=(--prompts 2 --new-tokens 8 --cache-dir "$tmp/cache")
  # a typo'd flag: the nearest flag of that command, when one is close
  expect 2 '^parity check: unknown option --promts \(did you mean --prompts\?\) \(see parity check --help\)$' -- check "$ref" "$fx/port_fused" --promts 8
  expect 2 '^parity check: unknown option --new-token \(did you mean --new-tokens\?\)' -- check "$ref" "$fx/port_fused" --new-token=8
  expect 2 '^parity gate: unknown option --atoll \(did you mean --atol\?\)' -- gate "$ref" "$fx/port_fused" --atoll 1
  expect 2 '^parity tree: unknown option --jsno \(did you mean --json\?\)' -- tree "$ref" --jsno
  expect 2 '^parity inputs: unknown option --promtp-len \(did you mean --prompt-len\?\)' -- inputs "$ref" --out "$tmp/in.safetensors" --promtp-len 4
  expect 2 '^parity diff: unknown option --expected-nosie \(did you mean --expected-noise\?\)' -- diff "$tmp/a" "$tmp/b" --expected-nosie 0.1
  expect 2 '^parity dump: unknown option --input \(did you mean --inputs\?\)' -- dump "$ref" --input x --out "$tmp/d"
  expect 2 '^parity matrix: unknown option --filtre \(did you mean --filter\?\)' -- matrix "$tmp/m.lua" --filtre x
  expect 2 '^parity run: unknown option --devcie \(did you mean --device\?\)' -- run --devcie cpu "$tmp/x.lua"
  expect 2 "^parity: unknown command 'chek' \(did you mean check\?" -- chek "$ref" "$fx/port_fused"
  # none when nothing is close
  expect 2 '^parity check: unknown option --frobnicate \(see parity check --help\)$' -- check "$ref" "$fx/port_fused" --frobnicate
  expect 2 '^parity tree: unknown option --wide \(see parity tree --help\)$' -- tree "$ref" --wide
  # a bad command line marks the last run's verdict "error" and leaves its other results as they
  # were: stages, scaffold/; the reports, rendered from the verdict, say the error
  expect 0 '^verdict: EQUIVALENT' -- check "$ref" "$fx/port_fused" --out "$tmp/res" "${common[@]}"
  snapshot() { (cd "$tmp/res" && find . | sort && find . -type f ! -name verdict.json ! -name junit.xml ! -name report.html \
    | sort | xargs sha256sum); }
  before=$(snapshot)
  echo 'return { r_p95 = "loose" }' >"$tmp/bad_thresholds.lua"
  for bad in "--promts 8" "--new-tokens 0" "--dtype fp8" "--topk nan" "--baseline 1-tensor" "--device tpu" \
             "--thresholds $tmp/bad_thresholds.lua" "--mapping $tmp/no_such_mapping.lua"; do
    # shellcheck disable=SC2086
    expect 2 '^parity check: ' -- check "$ref" "$fx/port_fused" --out "$tmp/res" "${common[@]}" $bad
    cases=$((cases + 1))
    if [[ $(snapshot) == "$before" ]] && grep -q '"verdict": "error"' "$tmp/res/verdict.json" \
       && grep -q '"error": "usage error: ' "$tmp/res/verdict.json" \
       && grep -q 'class="verdict v-error">ERROR' "$tmp/res/report.html" && grep -q '<error message="usage error: ' "$tmp/res/junit.xml"; then
      echo "ok   check $bad marks the verdict and leaves the rest of --out as it was"
    else failures=$((failures + 1)); echo "FAIL: check $bad changed --out:"; diff <(echo "$before") <(snapshot) | head -10; fi
  done
  # a torch.save pickle given as a model: what it is and what to do, in one line
  sd_why='a torch\.save pickle \(a state dict or a pickled nn\.Module\), not a TorchScript model: export the model itself with scripts/parity_export\.py \(docs/bundles\.md\)$'
  if /usr/bin/python3 -c "import torch" 2>/dev/null; then
    /usr/bin/python3 -c "import sys, torch; torch.save({'w': torch.zeros(2)}, sys.argv[1] + '/sd.pt'); torch.save(torch.nn.Linear(2, 2), sys.argv[1] + '/module.pt'); torch.save({'w': torch.zeros(2)}, sys.argv[1] + '/legacy.pt', _use_new_zipfile_serialization=False)" "$tmp"
    expect 2 "^parity tree: $tmp/sd.pt: $sd_why" -- tree "$tmp/sd.pt"
    expect 2 "^parity tree: $tmp/module.pt: $sd_why" -- tree "$tmp/module.pt"
    expect 2 "^parity tree: $tmp/legacy.pt: $sd_why" -- tree "$tmp/legacy.pt"
    expect 2 "^parity gate: $tmp/sd.pt: $sd_why" -- gate "$ref" "$tmp/sd.pt"
    cases=$((cases + 1))
    lines=$("$parity" tree "$tmp/sd.pt" 2>&1 | wc -l)
    if [[ $lines -eq 1 ]]; then echo "ok   a torch.save pickle is one line"; else failures=$((failures + 1)); echo "FAIL: a torch.save pickle printed $lines lines"; fi
  else
    echo "FAIL: /usr/bin/python3 has no torch to write a torch.save pickle"; failures=$((failures + 1))
  fi
  # arguments swapped: a divergent check whose reference has a port's names and whose target has
  # Hugging Face's says so; never the right order, never an equivalent verdict
  swap='^hint: is the order swapped\? parity check REFERENCE TARGET: the reference is the first argument'
  expect 1 "$swap" -- check "$fx/bug_eps" "$ref" --out "$tmp/swap" "${common[@]}"
  for pair in "$ref $fx/bug_eps 1" "$fx/port_fused $ref 0" "$ref $fx/port_fused 0" "$fx/noisy $fx/noisy_bug_gelu 1"; do
    set -- $pair
    cases=$((cases + 1))
    out=$("$parity" check "$1" "$2" --out "$tmp/swap" "${common[@]}" 2>&1); rc=$?
    if [[ $rc -eq $3 ]] && ! grep -q '^hint: is the order swapped' <<<"$out"; then echo "ok   no swap hint on check $1 $2 -> $rc"
    else failures=$((failures + 1)); echo "FAIL: check $1 $2: exit $rc (want $3), hint: $(grep 'hint' <<<"$out")"; fi
  done
  # the cosine line shows what the cosine criterion judges (1 - cosine), not "p5 1 p50 1"
  cases=$((cases + 1))
  out=$("$parity" check "$ref" "$fx/bug_eps_small" --out "$tmp/cos" "${common[@]}" --quiet 2>&1)
  judged=$(sed -nE 's/^  (pass|FAIL)  1 - cosine p5 <= .* ([0-9.e+-]+)$/\2/p' <<<"$out")
  shown=$(sed -nE 's/^  1 - cos p5 ([^ ]+) .*/\1/p' <<<"$out")
  if [[ -n $judged && $shown == "$judged" ]]; then echo "ok   the 1 - cos line shows the judged $judged"
  else failures=$((failures + 1)); echo "FAIL: 1 - cos line: shown '$shown', judged '$judged'"; grep -E 'cos' <<<"$out"; fi
  ;;
*)
  echo "unknown subcommand to test: $cmd"
  exit 2
  ;;
esac
echo "$cases cases, $failures failed"
[[ $cases -gt 0 && $failures -eq 0 ]]

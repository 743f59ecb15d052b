-- parity diff: dumps read, paired and compared layer by layer (stdlib/parity/diff.lua, dump.lua),
-- and saved logits as a target (saved.lua), on dumps written here with known differences.
local spec = require("parity.spec")
local describe, it, eq, truthy, raises = spec.describe, spec.it, spec.eq, spec.truthy, spec.raises
local diff, dump = require("parity.diff"), require("parity.dump")
local fixtures = arg[1]
local root = os.tmpname()
os.remove(root)

local function near(a, b, tol, what)
  truthy(math.abs(a - b) <= tol, ("%s: %s, want %s ± %s"):format(what, tostring(a), tostring(b), tostring(tol)))
end

-- reference states emb, h0..h3, logits [1, 8, 16]; the target is them times (1 + noise x N(0,1))
local ref = {}
for i, n in ipairs({ "emb", "h0", "h1", "h2", "h3", "logits" }) do ref[n] = torch.randn({ 1, 8, 16 }, { seed = i }) end

local function write(dir, tensors, ext)
  os.execute("mkdir -p " .. dir)
  for name, t in pairs(tensors) do
    parity.tensors.save(("%s/%s.%s"):format(dir, name, ext or "npy"), ext == "safetensors" and { x = t } or t)
  end
  return dir
end

local function noisy(noise, seed)
  local out = {}
  for n, t in pairs(ref) do out[n] = t * (torch.randn({ 1, 8, 16 }, { seed = seed + #n }) * noise + 1) end
  return out
end

local function row(report, name)
  for _, r in ipairs(report.tensors) do
    if r.name == name then return r end
  end
end

local ref_dir = write(root .. "/ref", ref)

describe("parity.dump", function()
  it("orders names by layer and sub-stage", function()
    eq(dump.sort({ "logits", "h10", "h2_ffnout", "h2", "emb", "post_norm", "h2_in", "zzz", "h2_postattn", "h2_preffn" }),
      { "emb", "h2_in", "h2_postattn", "h2_preffn", "h2_ffnout", "h2", "h10", "post_norm", "logits", "zzz" })
  end)

  it("renames through exact names and patterns", function()
    local d = dump.rename({ path = "x", names = { "blk.0.out", "tok" }, tensors = { ["blk.0.out"] = 1, tok = 2 },
      files = {}, ignored = {} }, { tok = "emb", ["^blk%.(%d+)%.out$"] = "h%1" })
    eq(d.names, { "emb", "h0" })
    eq(d.renamed.h0, "blk.0.out")
  end)
end)

describe("parity.diff", function()
  it("passes a target within float noise", function()
    local r = diff.run(ref_dir, write(root .. "/clean", noisy(1e-4, 10)))
    truthy(r.pass, "equivalent")
    eq(r.first_past_threshold, parity.json.null)
    eq(#r.tensors, 6)
    near(row(r, "h2").rel_l2, 1e-4, 1e-4, "rel L2 of 1e-4 noise")
  end)

  it("finds the first layer past its threshold, the step and a residual leak", function()
    local t = noisy(1e-4, 20)
    t.h0 = ref.h0 * (torch.randn({ 1, 8, 16 }, { seed = 21 }) * 0.015 + 1)  -- a small early step of noise
    t.h2 = ref.h2 + ref.h1 * 0.3  -- target h2 = ref h2 + 0.3 ref h1: the seed's leak signature
    t.h3 = ref.h3 + ref.h2 * 0.3
    local r = diff.run(ref_dir, write(root .. "/leak", t))
    truthy(not r.pass, "divergent")
    eq(r.first_past_threshold.name, "h2")
    eq(r.localized.name, "h2")
    truthy(r.localized.where:find("layer 2", 1, true), r.localized.where)
    near(r.localized.leak.alpha, 0.3, 1e-3, "leak alpha")
    truthy(r.localized.leak.quality > 0.99, "the fit explains the difference")
    truthy(row(r, "h0").step ~= nil and row(r, "h0").step.ratio < 10, "h0: a small step")
    truthy(row(r, "h2").step.ratio > 3 * row(r, "h0").step.ratio, "h2: the main one")
    eq(row(r, "h1").leak.quality < 0.5, true)
  end)

  it("reports a step below the thresholds without failing", function()
    local t = noisy(1e-4, 30)
    t.h2 = ref.h2 * (torch.randn({ 1, 8, 16 }, { seed = 31 }) * 0.02 + 1)
    local r = diff.run(ref_dir, write(root .. "/step", t))
    truthy(r.pass, "2% is within rel_l2 0.05")
    truthy(row(r, "h2").step ~= nil, "but it is a step over 1e-4")
    eq(row(r, "h1").step, nil)
  end)

  it("takes per-layer thresholds and the expected noise of a quantised engine", function()
    local t = noisy(0.08, 40)  -- 8% per tensor: past the default 5%
    local dir = write(root .. "/q4", t)
    eq(diff.run(ref_dir, dir).first_past_threshold.name, "emb")
    truthy(diff.run(ref_dir, dir, { thresholds = { expected_noise = 0.05 } }).pass, "2 x 5% at layer 0 and up")
    -- 20% noise: cosine about 0.98, below the default 0.99; the expected noise relaxes both
    local loud = write(root .. "/q2", noisy(0.2, 41))
    truthy(diff.run(ref_dir, loud, { thresholds = { expected_noise = 0.15, rel_l2 = 1 } }).pass, "cosine widened with rel_l2")
    truthy(not diff.run(ref_dir, loud, { thresholds = { rel_l2 = 1 } }).pass, "but not without the expected noise")
    local r = diff.run(ref_dir, dir, { thresholds = { layers = { ["^h%d$"] = { rel_l2 = 1, cosine = 0 }, emb = { rel_l2 = 1 } } } })
    eq(r.first_past_threshold.name, "logits")
    raises(function() diff.run(ref_dir, dir, { thresholds = { rel_l3 = 1 } }) end, "unknown threshold 'rel_l3'")
    raises(function() diff.run(ref_dir, dir, { thresholds = { rel_l2 = -1 } }) end, "'rel_l2' must be a finite number >= 0")
  end)

  it("compares a one-position dump at --pos and pairs renamed tensors", function()
    local t = noisy(1e-4, 50)
    local one = {}
    for n, x in pairs(t) do one["blk_" .. n] = x:select(1, 3):flatten() end  -- [16]: position 3 only
    one.blk_h1 = (ref.h1:select(1, 3) * 2):flatten()
    local r = diff.run(ref_dir, write(root .. "/pos", one, "safetensors"),
      { pos = 3, names = { ["^blk_(.*)$"] = "%1" } })
    eq(r.first_past_threshold.name, "h1")
    eq(r.first_past_threshold.position, 3)
    near(row(r, "h1").norm_ratio, 2, 1e-6, "|t|/|r|")
    eq(row(r, "h1").rows, 1)
  end)

  it("reports positions within each sequence", function()
    local r2, t2 = {}, {}
    for n, x in pairs(ref) do r2[n] = torch.cat({ x, x * 2 }, 0) end  -- [2, 8, 16]: two sequences
    for n, x in pairs(noisy(1e-4, 55)) do t2[n] = torch.cat({ x, x * 2 }, 0) end
    -- sequence 1, positions 5..7 off by 100%
    local mask = torch.cat({ torch.zeros({ 1, 8, 16 }), torch.cat({ torch.zeros({ 1, 5, 16 }), torch.ones({ 1, 3, 16 }) }, 1) }, 0)
    t2.h2 = r2.h2 + r2.h2 * mask
    local r = diff.run(write(root .. "/seq_ref", r2), write(root .. "/seq_t", t2))
    eq({ r.first_past_threshold.name, r.first_past_threshold.sequence, r.first_past_threshold.position }, { "h2", 1, 5 })
    eq(diff.at(5, 1), "position 5 of sequence 1")
    local at7 = diff.run(root .. "/seq_ref", root .. "/seq_t", { pos = 7 })
    eq({ at7.first_past_threshold.sequence, at7.first_past_threshold.position, row(at7, "h2").rows }, { 1, 7, 2 })
    truthy(diff.run(root .. "/seq_ref", root .. "/seq_t", { pos = 4 }).pass, "position 4 of both sequences is clean")
    -- an expected noise of 0 keeps the default floor: an exact prefix makes no step of every error
    eq(row(diff.run(root .. "/seq_ref", root .. "/seq_t", { thresholds = { expected_noise = 0 } }), "emb").step, nil)
  end)

  it("never passes NaN and names files on bad input", function()
    local t = noisy(1e-4, 60)
    t.h0 = t.h0:clone()
    t.h0 = t.h0 / torch.zeros({ 1, 8, 16 })  -- NaN and Inf
    local r = diff.run(ref_dir, write(root .. "/nan", t))
    eq(r.first_past_threshold.name, "h0")
    local short = noisy(1e-4, 70)
    short.h1 = nil
    raises(function() diff.run(ref_dir, write(root .. "/short", short)) end, root .. "/short: no dump of h1")
    local wide = noisy(1e-4, 80)
    wide.h3 = torch.zeros({ 1, 8, 17 })
    raises(function() diff.run(ref_dir, write(root .. "/wide", wide)) end, "h3: shapes differ: reference "
      .. ref_dir .. "/h3.npy [1, 8, 16], target " .. root .. "/wide/h3.npy [1, 8, 17]")
    raises(function() diff.run(ref_dir, root .. "/wide", { pos = 8 }) end, "--pos 8 is past its 8 positions")
    raises(function() diff.run(ref_dir, write(root .. "/other", { x = ref.h0 })) end, "no tensor names in common")
    local empty = noisy(1e-4, 81)
    empty.h1 = torch.zeros({ 1, 0, 16 })
    raises(function() diff.run(ref_dir, write(root .. "/empty", empty)) end, "h1: " .. root .. "/empty/h1.npy is empty")
  end)
end)

describe("parity diff: what a comparison must cover", function()
  local function only_emb()
    local t = noisy(1e-4, 100)
    return write(root .. "/only_emb", { emb = t.emb })
  end

  it("is incomplete, not equivalent, when the target lacks layer outputs or the logits", function()
    local r = diff.run(ref_dir, only_emb())
    eq({ r.pass, r.verdict }, { false, "incomplete" })
    eq(r.missing, { "h0", "h1", "h2", "h3", "logits" })
    eq(#r.tensors, 1)
    local text = diff.summary(r)
    truthy(text:find("incomplete: the target dump lacks 5 of the 6 reference tensors dumped; of what the comparison must"
      .. " cover (every layer's output h{l} and the logits) it lacks h0..h3, logits", 1, true), text)
    truthy(text:find("not compared (only the reference dumps them): h0..h3, logits", 1, true), text)
    truthy(text:find("verdict: INCOMPLETE", 1, true), text)
    -- an engine that stops before the logits
    local t = noisy(1e-4, 101)
    t.logits = nil
    eq(diff.run(ref_dir, write(root .. "/no_logits", t)).missing, { "logits" })
    -- a divergence among what was compared stays a divergence, and says what is missing too
    t.h1 = ref.h1 * 2
    local d = diff.run(ref_dir, write(root .. "/no_logits_bad", t))
    eq({ d.verdict, d.first_past_threshold.name, d.missing }, { "divergent", "h1", { "logits" } })
    -- a name mapping that renames the layers out of the rule does not narrow it
    local r2 = diff.run(ref_dir, only_emb(), { names = { ["^h(%d+)$"] = "x%1", ["^logits$"] = "y" } })
    eq({ r2.verdict, r2.missing }, { "incomplete", { "x0", "x1", "x2", "x3", "y" } })
  end)

  it("needs neither the embedding nor sub-stages, and lists what only the target dumps", function()
    local t = noisy(1e-4, 102)
    t.emb, t.h0_ffnout = nil, ref.h0
    local r = diff.run(ref_dir, write(root .. "/no_emb", t))
    eq({ r.pass, r.verdict, #r.missing }, { true, "equivalent", 0 })
    eq(r.not_compared, { { name = "emb", only = "reference" }, { name = "h0_ffnout", only = "target" } })
  end)

  it("compares only what --only selects, each of which the target must have, and says what it left out", function()
    local r = diff.run(ref_dir, only_emb(), { only = "emb" })
    eq({ r.pass, r.verdict, r.only, r.left_out }, { true, "equivalent", { "emb" }, { "h0", "h1", "h2", "h3", "logits" } })
    eq(r.not_compared, {})
    truthy(diff.summary(r):find("narrowed to emb: left out 5 tensors: h0..h3, logits", 1, true), diff.summary(r))
    local t = noisy(1e-4, 103)
    t.logits = nil
    local dir = write(root .. "/only_h", t)
    eq(diff.run(ref_dir, dir, { only = { "emb", "^h%d+$" } }).pass, true)
    eq(diff.run(ref_dir, dir, { only = "h1, logits" }).missing, { "logits" })
    raises(function() diff.run(ref_dir, dir, { only = "h9" }) end, "only: h9 matches no tensor of the reference dump")
    raises(function() diff.run(ref_dir, dir, { only = "^h[" }) end, "only: pattern \"^h[\" is not a Lua pattern (missing ']')")
    raises(function() diff.run(ref_dir, dir, { only = {} }) end, "only must list tensor names")
  end)

  it("lists thresholds looser than the defaults, and says when none can fail", function()
    local dir = write(root .. "/th", noisy(1e-4, 104))
    local r = diff.run(ref_dir, dir)
    eq({ #r.loosened, r.criteria_can_fail, #r.warnings }, { 0, true, 0 })
    -- tighter, or looser by less than 10x: nothing to say
    eq(#diff.run(ref_dir, dir, { thresholds = { rel_l2 = 0.4, cosine = 0.95, step = 2, expected_noise = 0.03 } }).loosened, 0)
    r = diff.run(ref_dir, dir, { thresholds = { rel_l2 = 1, layers = { logits = { cosine = 0.5 } } } })
    eq(r.loosened, { { name = "rel_l2", default = 0.05, given = 1, off = false, factor = 10 },
                     { name = 'layers["logits"].cosine', default = 0.99, given = 0.5, off = false, factor = 10 } })
    eq(r.criteria_can_fail, true)
    truthy(diff.summary(r):find("warning: loosened threshold rel_l2 = 1 (default 0.05; more than 10x looser)", 1, true),
      diff.summary(r))
    eq(diff.run(ref_dir, dir, { thresholds = { expected_noise = 0.3 } }).loosened[1].name, "noise_factor x expected_noise")
    r = diff.run(ref_dir, dir, { thresholds = { rel_l2 = 1e9, cosine = -1 } })
    eq({ r.pass, r.criteria_can_fail }, { true, false })
    eq({ r.loosened[1].off, r.loosened[2].off }, { true, true })
    truthy(diff.summary(r):find("THESE THRESHOLDS SWITCH OFF rel_l2 AND cosine FOR EVERY TENSOR", 1, true), diff.summary(r))
    -- one tensor still judged is enough for the criteria to fail
    eq(diff.run(ref_dir, dir, { thresholds = { rel_l2 = 1e9, cosine = -1, layers = { h2 = { rel_l2 = 0.1, cosine = 0.9 } } } })
      .criteria_can_fail, true)
  end)
end)

describe("parity matrix", function()
  it("runs a JSON matrix of dump directories and reports the failing pair", function()
    local leak = noisy(1e-4, 90)
    leak.h1 = ref.h1 * 1.5
    write(root .. "/m/engines/good", noisy(1e-4, 91))
    write(root .. "/m/engines/bad", leak)
    local f = io.open(root .. "/m/p0.safetensors", "wb")
    f:close()
    parity.json.write(root .. "/m/matrix.json", { entries = {
      { model = "good", prompts = { "p0.safetensors" }, reference = ref_dir, engine = "engines/{model}" },
      { model = "bad", prompts = { "p0.safetensors" }, reference = ref_dir, engine = "engines/{model}" },
    } })
    local matrix = require("parity.matrix")
    local r = matrix.run(matrix.load(root .. "/m/matrix.json"), { reports = root .. "/m/reports" })
    eq(r.exit, 1)
    eq({ r.rows[1].verdict, r.rows[2].verdict }, { "equivalent", "divergent" })
    eq(r.rows[2].localized.name, "h1")
    eq(parity.path_kind(root .. "/m/reports/bad__p0.diff"), "file")
    eq(parity.path_kind(root .. "/m/reports/good__p0.diff"), nil)
    eq(matrix.run(matrix.load(root .. "/m/matrix.json"), { reports = root .. "/m/reports", filter = "good" }).exit, 0)
    parity.json.write(root .. "/m/matrix.json", { entries = {
      { model = "gone", prompts = { "p0.safetensors" }, reference = ref_dir, engine = "engines/{model}" } } })
    eq(matrix.run(matrix.load(root .. "/m/matrix.json"), { reports = root .. "/m/reports" }).exit, 2)
  end)

  it("does not pass an engine that stops dumping, unless the entry narrows the comparison", function()
    write(root .. "/m/engines/quiet", { emb = ref.emb })  -- dumps the embedding and nothing else
    local matrix = require("parity.matrix")
    parity.json.write(root .. "/m/matrix.json", { entries = {
      { model = "quiet", prompts = { "p0.safetensors" }, reference = ref_dir, engine = "engines/{model}" } } })
    local r = matrix.run(matrix.load(root .. "/m/matrix.json"), { reports = root .. "/m/reports" })
    eq({ r.exit, r.rows[1].verdict, r.rows[1].pass }, { 2, "incomplete", false })
    truthy(matrix.line(r.rows[1]):find("INCOMPLETE  the engine's dump lacks h0..h3, logits", 1, true), matrix.line(r.rows[1]))
    eq(parity.path_kind(root .. "/m/reports/quiet__p0.diff"), "file")
    parity.json.write(root .. "/m/matrix.json", { only = "emb", entries = {
      { model = "quiet", prompts = { "p0.safetensors" }, reference = ref_dir, engine = "engines/{model}" } } })
    r = matrix.run(matrix.load(root .. "/m/matrix.json"), { reports = root .. "/m/reports" })
    eq({ r.exit, r.rows[1].verdict }, { 0, "equivalent" })
    truthy(matrix.line(r.rows[1]):find("PASS  (narrowed: 5 tensors left out)", 1, true), matrix.line(r.rows[1]))
    parity.json.write(root .. "/m/matrix.json", { only = "emb", thresholds = { rel_l2 = 1e9, cosine = -1 }, entries = {
      { model = "quiet", prompts = { "p0.safetensors" }, reference = ref_dir, engine = "engines/{model}" } } })
    r = matrix.run(matrix.load(root .. "/m/matrix.json"), { reports = root .. "/m/reports" })
    truthy(matrix.line(r.rows[1]):find("(loosened thresholds: rel_l2, cosine; NO CRITERION CAN FAIL)", 1, true),
      matrix.line(r.rows[1]))
    parity.json.write(root .. "/m/matrix.json", { entries = {
      { model = "quiet", prompts = { "p0.safetensors" }, reference = ref_dir, engine = "engines/{model}", only = 3 } } })
    raises(function() matrix.load(root .. "/m/matrix.json") end, "entry 1: only must list tensor names")
  end)
end)

describe("parity dump (through the taps)", function()
  it("finds the stack, the FFN, its norm and the final norm of both layouts", function()
    local ids = torch.randint(0, 512, { 1, 6 }, { seed = 1 })
    for _, name in ipairs({ "reference", "port_fused" }) do
      local dir = ("%s/dump_%s"):format(root, name)
      local w = dump.write(parity.load(fixtures .. "/" .. name .. "/fp32.pt"), ids, dir)
      eq(w.names, { "emb", "h0_in", "h0_postattn", "h0_preffn", "h0_ffnout", "h0", "h1_in", "h1_postattn", "h1_preffn",
        "h1_ffnout", "h1", "post_norm", "logits" })
    end
    truthy(diff.run(root .. "/dump_reference", root .. "/dump_port_fused").pass, "the fused port computes the same states")
  end)
end)

describe("saved logits as a target", function()
  it("gives its logits back for the sequences they were saved for, and refuses others", function()
    local saved = require("parity.saved")
    local ids = torch.randint(0, 512, { 2, 5 }, { seed = 2 })
    local logits = torch.randn({ 2, 5, 512 }, { seed = 3 })
    local dir = root .. "/saved"
    os.execute("mkdir -p " .. dir)
    parity.tensors.save(dir .. "/logits.npy", logits)
    parity.tensors.save(dir .. "/logits_fp32.safetensors", { logits = logits * 2 })
    parity.tensors.save(dir .. "/input_ids.npy", ids)
    truthy(saved.is_saved(dir) and not saved.is_saved(fixtures .. "/reference"), "told apart from a bundle")
    local s = saved.open(dir)
    truthy(s:has("fp32") and s:has("bf16"), "an fp32 run and the run")
    truthy(s:at("bf16")(ids) == logits and s:at("fp32")(ids) == logits * 2, "each run's logits")
    eq(s:vocab_size(), 512)
    raises(function() s:at("bf16")(ids + 1) end, "the saved input_ids [2, 5] are not the token ids this run uses")
    os.remove(dir .. "/input_ids.npy")
    raises(function() saved.open(dir):at("bf16")(ids:narrow(1, 0, 4)) end, "logits [2, 5, 512] are not for this run's 2 sequences of 4 tokens")
    parity.tensors.save(dir .. "/logits.safetensors", { logits = logits })
    raises(function() saved.open(dir) end, "keep one")
  end)
end)

local rc = spec.run()
os.execute("rm -rf " .. root)
return rc

"""Real lm-evaluation-harness results for parity downstream's tests (tests/data/lmeval/).

A tiny Llama (2 layers, 64 wide) with a word-level tokenizer of its own, trained for a few
hundred steps to count (each number's successor), a local multiple-choice task ("what follows
3 4 5?", four choices), and lm-eval 0.4.x run on three models with --log_samples:
  reference  the trained model in fp32
  port_bf16  the same weights in bf16 (a correct port: within a tolerance of 2 points)
  port_bug   layer 1's MLP output with its sign flipped (a port that regresses)
Nothing is downloaded: the tokenizer and the dataset are made here, lm-eval runs offline.
  python bench/make_lmeval.py OUT_DIR [--docs 150]
needs torch, transformers, tokenizers and lm-eval==0.4.x (tests/data/lmeval/README.md says
which made the committed files). Writes OUT_DIR/{models,task,reference,port_bf16,port_bug}.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

NUMBERS = [str(i) for i in range(60)]
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def tokenizer(out):
    vocab = {t: i for i, t in enumerate(SPECIAL + NUMBERS + ["Count:", "next:"])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def train(tok, out, steps, seed):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(seed)
    for step in range(steps):
        batch = []
        for _ in range(32):  # the task's own form: three numbers, then the one after them
            start = rng.randrange(0, 50)
            batch.append(tok("Count: " + " ".join(NUMBERS[start:start + 3]) + " next: " + NUMBERS[start + 3])["input_ids"])
        ids = torch.tensor(batch)
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(f"train step {step}: loss {loss.item():.3f}", flush=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return model


def task(out, docs, seed):
    rng = random.Random(seed + 1)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "counting.jsonl"), "w") as f:
        for _ in range(docs):
            start = rng.randrange(0, 50)
            run = NUMBERS[start:start + 3]
            answer = NUMBERS[start + 3]
            wrong = rng.sample([n for n in NUMBERS if n != answer], 3)
            choices = [answer] + wrong
            rng.shuffle(choices)
            # one document in six keyed to a wrong choice (label noise): no model scores 100%, so
            # the scores have a spread to compare
            gold = choices.index(answer) if rng.random() >= 1 / 6 else choices.index(wrong[0])
            f.write(json.dumps({"context": "Count: " + " ".join(run) + " next:", "choices": choices,
                                "gold": gold}) + "\n")
    with open(os.path.join(out, "counting.yaml"), "w") as f:
        f.write(f"""task: counting
dataset_path: json
dataset_kwargs:
  data_files:
    test: {os.path.abspath(os.path.join(out, "counting.jsonl"))}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{gold}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""")


def lm_eval(model_dir, dtype, task_dir, out):
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args",
           f"pretrained={model_dir},dtype={dtype}", "--tasks", "counting", "--include_path", task_dir,
           "--output_path", out, "--log_samples", "--device", "cpu", "--batch_size", "16"]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--docs", type=int, default=150)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    models_dir = os.path.join(a.out, "models")
    tok = tokenizer(os.path.join(models_dir, "tokenizer"))
    ref = os.path.join(models_dir, "reference")
    model = train(tok, ref, a.steps, a.seed)
    bug = os.path.join(models_dir, "port_bug")
    with torch.no_grad():  # the port's bug: layer 1's MLP output with its sign flipped
        model.model.layers[1].mlp.down_proj.weight.mul_(-1)
    model.save_pretrained(bug, safe_serialization=True)
    tok.save_pretrained(bug)
    task_dir = os.path.join(a.out, "task")
    task(task_dir, a.docs, a.seed)
    for name, model_dir, dtype in (("reference", ref, "float32"), ("port_bf16", ref, "bfloat16"),
                                   ("port_bug", bug, "float32")):
        dest = os.path.join(a.out, name)
        shutil.rmtree(dest, ignore_errors=True)
        lm_eval(model_dir, dtype, task_dir, dest)


if __name__ == "__main__":
    main()

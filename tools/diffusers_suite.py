"""Run diffusers' own fast SDXL pipeline tests against sdxl (or against diffusers itself, for a baseline).

    python tools/diffusers_suite.py /path/to/diffusers-checkout --backend sdxl --workdir /tmp/dsuite
    python tools/diffusers_suite.py /path/to/diffusers-checkout --backend diffusers --workdir /tmp/dsuite-ref

Nothing is fetched: pass a local checkout of https://github.com/huggingface/diffusers (its `tests/` folder is copied
to `--workdir`, outside this repository; no test code of diffusers is ever committed here). With `--backend sdxl`
the imports of `tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl{,_img2img,_inpaint}.py` and of the
test mixins they use are switched from `diffusers` / `transformers` to `sdxl`, name by name, for every class sdxl
provides (pipelines, models, schedulers, the CLIP text/vision models, tokenizer and image processor, the
IPAdapterMixin/StableDiffusionMixin bases); everything else stays diffusers'. The one hub file the tests read
(`hf-internal-testing/tiny-random-clip`, a 1000-token CLIP tokenizer) is replaced by a stand-in written into a
private offline Hugging Face cache, so the run needs no network.

Prints passed/failed/skipped counts, the skip reasons grouped (GPU-only, hub/slow), and the failing test ids;
`--json FILE` writes them. Needs pytest, `parameterized` and `requests-mock` (diffusers' test imports).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

SDXL_TESTS = [
    "tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl.py",
    "tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl_img2img.py",
    "tests/pipelines/stable_diffusion_xl/test_stable_diffusion_xl_inpaint.py",
]
# files whose `from diffusers ... import` / `from transformers import` lines are switched
SWITCHED_FILES = [*SDXL_TESTS, "tests/pipelines/test_pipelines_common.py"]
TOKENIZER_REPO = "hf-internal-testing/tiny-random-clip"
TOKENIZER_VOCAB = 1000
FAKE_COMMIT = "0" * 40

IMPORT_BLOCK = re.compile(r"^from (diffusers(?:\.[\w.]+)?|transformers) import (\([^)]*\)|[^\n]*)", re.MULTILINE)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP's byte -> printable-unicode table (the one tests/reference.py writes vocabularies with)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from reference import _bytes_to_unicode as table

    return list(table().values())


def write_stand_in_tokenizer(folder: Path) -> None:
    """A 1000-token CLIP BPE tokenizer (bytes, bytes + </w>, the first CLIP merges, then bos/eos) in hub layout."""
    raw = resources.files("sdxl").joinpath("data/bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1:]
    base = _bytes_to_unicode()
    vocab = base + [b + "</w>" for b in base]
    merges = []
    for line in lines:
        if len(vocab) >= TOKENIZER_VOCAB - 2:
            break
        a, b = line.split()
        if a in vocab and b in vocab and a + b not in vocab:
            merges.append(line)
            vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (folder / "special_tokens_map.json").write_text(json.dumps(special))
    config = {**special, "model_max_length": 77, "tokenizer_class": "CLIPTokenizer", "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))


def write_offline_cache(hf_home: Path) -> None:
    repo = hf_home / "hub" / ("models--" + TOKENIZER_REPO.replace("/", "--"))
    write_stand_in_tokenizer(repo / "snapshots" / FAKE_COMMIT)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)


def _names(spec: str) -> list[str]:
    body = spec.strip().strip("()")
    return [n.strip() for n in body.replace("\n", " ").split(",") if n.strip()]


def switch_imports(path: Path, provided: set[str]) -> list[str]:
    """Rewrite `from diffusers[.x] import A, B` so that names sdxl provides come from sdxl; returns those names."""
    text = path.read_text()
    switched: list[str] = []

    def repl(match: re.Match) -> str:
        module, spec = match.group(1), match.group(2)
        names = _names(spec)
        ours = [n for n in names if n.split(" as ")[0] in provided]
        theirs = [n for n in names if n not in ours]
        switched.extend(ours)
        lines = []
        if theirs:
            lines.append(f"from {module} import ({', '.join(theirs)})")
        if ours:
            lines.append(f"from sdxl import ({', '.join(ours)})")
        return "\n".join(lines) if lines else "pass"

    path.write_text(IMPORT_BLOCK.sub(repl, text))
    return switched


def sdxl_names() -> set[str]:
    import sdxl

    return set(sdxl.__all__)


def _summary_part(log: str) -> str:
    """From pytest's short test summary on (the counts line is the last line)."""
    start = log.rfind("short test summary info")
    return log[start:] if start >= 0 else log


def parse_summary(log: str) -> dict:
    counts = {}
    for key in ("passed", "failed", "skipped", "error", "errors"):
        m = re.findall(rf"(\d+) {key}\b", log.strip().splitlines()[-1] if log.strip() else "")
        if m:
            counts["errors" if key == "error" else key] = int(m[-1])
    failed = sorted(set(re.findall(r"^(?:FAILED|ERROR) (\S+)", log, re.MULTILINE)))
    skips: dict[str, int] = {}
    for n, reason in re.findall(r"^SKIPPED \[(\d+)\] [^:]+:\d+: (.*)$", log, re.MULTILINE):
        skips[reason] = skips.get(reason, 0) + int(n)
    return {"counts": counts, "failed": failed, "skip_reasons": skips}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("diffusers_checkout", type=Path, help="a local clone of huggingface/diffusers")
    parser.add_argument("--backend", choices=("sdxl", "diffusers"), default="sdxl")
    parser.add_argument("--workdir", type=Path, required=True, help="scratch folder (outside this repository)")
    parser.add_argument("--json", type=Path, help="write the counts and failing ids here")
    parser.add_argument(
        "--compare", type=Path, help="the --json of a --backend diffusers run: failures it shares are marked"
    )
    parser.add_argument("-k", default=None, help="pytest -k expression (a subset)")
    parser.add_argument("--timeout", type=int, default=3600)
    args = parser.parse_args(argv)

    source = args.diffusers_checkout / "tests"
    if not (args.diffusers_checkout / SDXL_TESTS[0]).is_file():
        parser.error(f"{args.diffusers_checkout} is not a diffusers checkout (no {SDXL_TESTS[0]})")
    repo_root = Path(__file__).resolve().parent.parent
    if args.workdir.resolve().is_relative_to(repo_root):
        parser.error("--workdir must be outside this repository (diffusers' test code is never kept here)")
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    shutil.copytree(source, args.workdir / "tests")
    write_offline_cache(args.workdir / "hf_home")

    if args.backend == "sdxl":
        provided = sdxl_names()
        for rel in SWITCHED_FILES:
            names = switch_imports(args.workdir / rel, provided)
            print(f"{rel}: from sdxl import {', '.join(sorted(set(names)))}")

    env = dict(os.environ, HF_HOME=str(args.workdir / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(repo_root / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", *SDXL_TESTS]
    if args.k:
        cmd += ["-k", args.k]
    print("running:", " ".join(cmd), f"(in {args.workdir})", flush=True)
    log_path = args.workdir / f"pytest-{args.backend}.log"
    with log_path.open("w") as log:  # streamed, so a long run can be followed with `tail -f`
        subprocess.run(
            cmd, cwd=args.workdir, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout, check=False
        )
    result = {"backend": args.backend, **parse_summary(_summary_part(log_path.read_text()))}
    print(json.dumps(result["counts"]), "\nskipped by reason:")
    for reason, n in sorted(result["skip_reasons"].items(), key=lambda x: -x[1]):
        print(f"  {n:4d}  {reason}")
    shared = set(json.loads(args.compare.read_text())["failed"]) if args.compare else set()
    print("failed:" if result["failed"] else "failed: none")
    for test_id in result["failed"]:
        print("  ", test_id, "(fails with diffusers too)" if test_id in shared else "")
    if args.compare:
        result["failed_with_diffusers_too"] = sorted(shared & set(result["failed"]))
        print(f"{len(set(result['failed']) - shared)} failures that diffusers itself does not have in this harness")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

#!/usr/bin/env python3
"""GPU check of modelcache's CPU-written sharded_state artifacts against vLLM's normal loader.

Not run by CI (it needs an NVIDIA GPU and vLLM). For each architecture it writes a small
real-shaped synthetic checkpoint with mc-make-checkpoint, shards it on the CPU with
`modelcache shard --engine-release <the installed vLLM's version>`, then loads the same weights
twice in vLLM, once from the checkpoint (load_format "safetensors") and once from the shards
(load_format "sharded_state"), and compares greedy tokens and the top logprobs on fixed prompts.
A pair that matches is a (release, architecture) pair proven on that GPU; a refusal by the
sharder (an architecture not read for that release) is reported as such.

    python3 bench/gpu/check_sharded_state.py --bin build-test [--tp 2] [--arch qwen3-moe,gemma3]

Each vLLM run happens in its own child process (vLLM keeps GPU memory until exit).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

# Small but kernel-friendly shapes (head_dim 64..256, sizes multiples of 64); the rest of each
# architecture's config (biases, norms, tied embeddings, experts) is the generator's real one.
COMMON = ["--layers", "2", "--vocab", "1000", "--hidden", "512", "--heads", "8",
          "--kv-heads", "2", "--intermediate", "1024"]
ARCHS = {
    "llama3": COMMON,
    "qwen2": COMMON,
    "qwen3": COMMON + ["--head-dim", "128"],
    "phi3": COMMON,
    "phi4-mini": COMMON + ["--tie-embeddings"],
    "gemma": ["--layers", "2", "--vocab", "1000", "--hidden", "512", "--heads", "4",
              "--kv-heads", "1", "--head-dim", "256", "--intermediate", "1024"],
    "gemma2": COMMON + ["--head-dim", "256"],
    "gemma3": COMMON + ["--head-dim", "256"],
    "mixtral": COMMON + ["--experts", "8"],
    "qwen2-moe": COMMON + ["--experts", "8", "--moe-intermediate", "256",
                           "--shared-intermediate", "512"],
    "qwen3-moe": COMMON + ["--head-dim", "128", "--experts", "16", "--moe-intermediate", "256"],
}
PROMPTS = ["the model cache is", "hello world , the tensor", "a shard of the parallel model",
           "in the cache and"]


def run_vllm(path, tp, load_format, out):
    """Child: load once, greedy-generate, dump tokens and top logprobs."""
    from vllm import LLM, SamplingParams
    llm = LLM(model=path, tensor_parallel_size=tp, load_format=load_format, dtype="bfloat16",
              enforce_eager=True, seed=0, gpu_memory_utilization=0.4, max_model_len=256)
    params = SamplingParams(temperature=0.0, max_tokens=16, logprobs=5)
    result = []
    for r in llm.generate(PROMPTS, params):
        c = r.outputs[0]
        result.append({"tokens": list(c.token_ids),
                       "logprobs": [{str(k): v.logprob for k, v in step.items()}
                                    for step in (c.logprobs or [])]})
    with open(out, "w") as f:
        json.dump(result, f)


def compare(a, b, tolerance):
    for i, (x, y) in enumerate(zip(a, b)):
        if x["tokens"] != y["tokens"]:
            return f"prompt {i}: tokens differ {x['tokens']} vs {y['tokens']}"
        for step, (p, q) in enumerate(zip(x["logprobs"], y["logprobs"])):
            for token, lp in p.items():
                if token in q and abs(lp - q[token]) > tolerance:
                    return f"prompt {i} step {step} token {token}: logprob {lp} vs {q[token]}"
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True, help="build directory with modelcache binaries")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--arch", default=",".join(ARCHS))
    ap.add_argument("--work", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--tolerance", type=float, default=1e-3,
                    help="largest logprob difference accepted (same weights, same kernels)")
    ap.add_argument("--run-one", nargs=4, metavar=("PATH", "TP", "FORMAT", "OUT"),
                    help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.run_one:
        path, tp, fmt, out = args.run_one
        run_vllm(path, int(tp), fmt, out)
        return 0
    import vllm
    release = vllm.__version__.split("+")[0]
    work = args.work or tempfile.mkdtemp(prefix="mc-gpu-check-")
    gen = os.path.join(args.bin, "tests/fixtures/checkpoint/mc-make-checkpoint")
    mc = os.path.join(args.bin, "cli/modelcache")
    failures = 0
    print(f"vLLM {release}, tp {args.tp}, work dir {work}")
    for arch in args.arch.split(","):
        src = os.path.join(work, arch, "src")
        out = os.path.join(work, arch, f"tp{args.tp}")
        subprocess.run([gen, src, "--arch", arch] + ARCHS[arch], check=True,
                       stdout=subprocess.DEVNULL)
        shard = subprocess.run([mc, "shard", src, out, "--tp", str(args.tp), "--engine", "vllm",
                                "--engine-release", release, "--dtype", "bfloat16"],
                               capture_output=True, text=True)
        if shard.returncode != 0:
            print(f"{arch:10} REFUSED by the sharder: {shard.stderr.strip()}")
            continue
        results = {}
        for fmt, path in (("safetensors", src), ("sharded_state", out)):
            dump = os.path.join(work, arch, f"{fmt}.json")
            child = subprocess.run([sys.executable, __file__, "--bin", args.bin, "--run-one", path,
                                    str(args.tp), fmt, dump], capture_output=True, text=True)
            if child.returncode != 0:
                results[fmt] = None
                print(f"{arch:10} FAILED to load with {fmt}:\n{child.stderr[-3000:]}")
                break
            with open(dump) as f:
                results[fmt] = json.load(f)
        if None in results.values() or len(results) < 2:
            failures += 1
            continue
        diff = compare(results["safetensors"], results["sharded_state"], args.tolerance)
        if diff:
            failures += 1
            print(f"{arch:10} MISMATCH: {diff}")
        else:
            print(f"{arch:10} OK: greedy tokens and top-5 logprobs equal on {len(PROMPTS)} prompts")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

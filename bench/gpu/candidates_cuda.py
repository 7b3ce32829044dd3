"""The sampler chain on candidates on CUDA, held to the whole-row chain as tests/models/test_sampling_candidates.py
holds it on a CPU (where CUDA's way, no host reads, is only imitated): for random rows and chains
(tests/models/sampling_cases.py: ties, -inf, NaN rows, every route's order, penalties, bias, infill), `chained` gives
the whole-row chain's logits, and `sample` the whole row's exponential race's tokens for the same CUDA generator
seed, three steps running, the generator left in the same state.

    PYTHONPATH=. python3 bench/gpu/candidates_cuda.py [--cases 900] [--device cuda]

Prints one line per kind of disagreement found (none expected) and a summary line last; status 1 if any."""

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "models"))
from sampling_cases import random_case, same, whole_row_sample  # noqa: E402

from models.sampling import chain, chained, sample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=900)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    rng = random.Random(args.seed)
    tally, wrong = Counter(), Counter()
    for case in range(args.cases):
        logits, config, penalize, infill, bias = random_case(rng)
        logits = logits.to(device)
        bias = None if bias is None else bias.to(device)
        candidates = chain(logits, config, penalize, infill, bias)
        tally["compact" if candidates.compact else "whole rows"] += 1
        if not same(chained(logits, config, penalize, infill, bias),
                    chain(logits, config, penalize, infill, bias, compact=False).row()):
            wrong["logits"] += 1
            print(f"case {case}: chained logits differ, {config}")
        seed = rng.randrange(2**31)
        ours = torch.Generator(device=device).manual_seed(seed)
        theirs = torch.Generator(device=device).manual_seed(seed)
        for step in range(3):
            got = sample(logits, config, ours, penalize, infill, bias, end=1)
            want = whole_row_sample(logits, config, theirs, penalize, infill, bias, end=1)
            if not torch.equal(got, want):
                wrong["tokens"] += 1
                print(f"case {case} step {step}: tokens {got.tolist()} against {want.tolist()}, {config}")
        if not torch.equal(torch.rand(4, generator=ours, device=device), torch.rand(4, generator=theirs, device=device)):
            wrong["generator"] += 1
            print(f"case {case}: the generator's state differs")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}: {args.cases} cases ({tally['compact']} on candidates, {tally['whole rows']} whole rows), "
          f"disagreements: {dict(wrong) or 'none'}")
    sys.exit(1 if wrong else 0)


if __name__ == "__main__":
    main()

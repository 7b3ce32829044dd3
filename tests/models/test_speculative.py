"""Speculative decoding by prompt lookup: the drafter, greedy output identical to plain decoding on the embedded
model over 30 prompts from installed packages (stops, EOS and the token limit inside accepted drafts, prefix
reuse between requests), and rejection sampling that keeps the sampled distribution."""

import importlib.util
import random
import sys
import types
from pathlib import Path

import pytest
import torch

import models
import models.request_sampler
from models import GenerationConfig, load_model
from models.llama import Decode
from models.sampling import probabilities
from models.speculative import PromptLookup, accept

FILES = [("rich", "table.py"), ("jinja2", "filters.py"), ("httpx", "_urls.py"), ("click", "types.py"),
         ("pygments", "lexer.py"), ("prompt_toolkit", "document.py"), ("starlette", "routing.py"),
         ("markdown_it", "ruler.py"), ("openai", "_base_client.py"), ("yaml", "constructor.py")]
PROMPT_TOKENS, STEP_TOKENS, NEW_TOKENS = 160, 40, 12
DEPTH = 8


def test_prompt_lookup_drafts_what_followed_the_longest_recent_match():
    drafter = PromptLookup([5, 1, 2, 3, 4, 9, 2, 3, 7, 8, 1, 2, 3])
    assert drafter.draft(3) == [4, 9, 2]          # "1 2 3" (3 tokens) beats the more recent "2 3" -> 7
    drafter.extend([6])
    assert drafter.draft(3) == []                 # "3 6" was never seen
    drafter.extend([2, 3])
    assert drafter.draft(2) == [6, 2]             # only "2 3" matches; its newest earlier occurrence precedes "6 2"
    assert PromptLookup([1, 2]).draft(4) == []    # nothing before the suffix itself
    # A match near the end copies its own draft onward (a loop with a period shorter than the draft).
    assert PromptLookup([7, 1, 2, 1, 2, 1, 2]).draft(5) == [1, 2, 1, 2, 1]
    assert PromptLookup([5, 5, 5]).draft(4) == [5, 5, 5, 5]


def test_prompt_lookup_agrees_with_a_plain_search_as_the_sequence_grows():
    """The numpy scan against the definition, written as plainly as possible, on random sequences over small
    alphabets (many repeats), extended a few tokens at a time."""
    def expected(seq, k):
        for n in (4, 3, 2):
            ends = [end for end in range(n, len(seq)) if seq[end - n:end] == seq[len(seq) - n:]]
            if ends and len(seq) >= n:
                draft = seq[ends[-1]:ends[-1] + k]
                while len(draft) < k:
                    draft.append(draft[len(draft) - (len(seq) - ends[-1])])
                return draft
        return []

    rng = random.Random(7)
    for trial in range(60):
        alphabet = rng.choice([2, 3, 5, 20])
        seq = [rng.randrange(alphabet) for _ in range(rng.randrange(0, 40))]
        drafter = PromptLookup(seq)
        for _ in range(8):
            k = rng.randrange(1, 9)
            assert drafter.draft(k) == expected(seq, k), (trial, seq, k)
            more = [rng.randrange(alphabet) for _ in range(rng.randrange(1, 4))]
            drafter.extend(more)
            seq += more
        assert drafter.tokens == seq


def prompts(tokenizer) -> list[list[int]]:
    """Three prompts per file, each extending the one before by STEP_TOKENS: consecutive requests share a prefix."""
    out = []
    for package, name in FILES:
        path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / name
        ids = tokenizer.encode(path.read_text())
        start = len(ids) // 3
        out += [ids[start:start + PROMPT_TOKENS + i * STEP_TOKENS] for i in range(3)]
    return out


@pytest.fixture(scope="module")
def runs(smollm_engine):
    """Every prompt, in order on one engine (prefix reuse between requests), plain and speculative; the steps
    of the speculative runs as the engine's `accept` returned them."""
    engine = smollm_engine
    steps: list[list[list[int]]] = []
    texts = prompts(engine.tokenizer)

    def spy(logits, drafts, config, generator, *chain):
        emitted = accept(logits, drafts, config, generator, *chain)
        steps[-1].append(emitted)
        return emitted

    out = {}
    for depth in (0, DEPTH):
        engine.clear_prefix_cache()
        results = []
        for prompt in texts:
            steps.append([])
            models.request_sampler.accept = spy
            try:
                results.append(engine.generate(prompt, GenerationConfig(max_new_tokens=NEW_TOKENS, speculate=depth)))
            finally:
                models.request_sampler.accept = accept
        out[depth] = results
    return texts, out, steps[len(out[0]):]


def test_greedy_output_is_identical_with_and_without_speculation(runs):
    _, results, steps = runs
    plain, spec = results[0], results[DEPTH]
    assert len(plain) == 30
    for p, s in zip(plain, spec):
        assert s.token_ids == p.token_ids and s.text == p.text and s.finish_reason == p.finish_reason
    # Speculation really ran: drafts were accepted, and steps emitted several tokens.
    accepted = sum(r.timings.accepted_tokens for r in spec)
    generated = sum(len(r.token_ids) - 1 for r in spec)
    assert accepted >= 0.2 * generated and sum(r.timings.decode_steps for r in spec) < generated
    assert all(r.timings.drafted_tokens == 0 for r in plain)
    # Requests after the first of each file reused the prefix, in both modes.
    assert all(r.reused_prefix_tokens >= PROMPT_TOKENS - 1 for i, r in enumerate(plain + spec) if i % 3)
    # The timings add up: one step per model token, the accepted drafts the output kept on top (a stop inside a
    # step leaves the drafts after it out).
    for r, emitted in zip(spec, steps):
        t = r.timings
        assert t.decode_steps == len(emitted) and 1 + t.decode_steps + t.accepted_tokens == len(r.token_ids)
        assert t.accepted_tokens == sum(len(e) - 1 for e in emitted) or r.finish_reason == "stop"
        assert t.tokens_per_step == pytest.approx((len(r.token_ids) - 1) / t.decode_steps)


def inside_accepted_draft(steps) -> list[int]:
    """Indices (into the generated tokens) of tokens that came from a draft and were followed by more tokens of
    the same step: a stop or a limit there ends generation in the middle of what one step emitted."""
    positions, index = [], 1                     # token 0 comes from the prefill
    for emitted in steps:
        positions += range(index, index + len(emitted) - 1)
        index += len(emitted)
    return positions


def first_case(runs, ok):
    """(prompt, plain result, position): the first prompt with a position inside an accepted draft that `ok` likes."""
    texts, results, steps = runs
    for prompt, plain, emitted in zip(texts, results[0], steps):
        for j in inside_accepted_draft(emitted):
            if j < len(plain.token_ids) - 1 and ok(plain, j):
                return prompt, plain, j
    raise AssertionError("no accepted draft long enough in 30 prompts")


def both(engine, prompt, **config):
    engine.clear_prefix_cache()
    return [engine.generate(prompt, GenerationConfig(speculate=k, **config)) for k in (0, DEPTH)]


def test_eos_inside_an_accepted_draft(smollm_engine, runs):
    # A token that first appears inside an accepted draft becomes a stop token (the EOS path).
    prompt, plain, j = first_case(runs, lambda r, j: r.token_ids.index(r.token_ids[j]) == j)
    stop = plain.token_ids[j]
    a, b = both(smollm_engine, prompt, max_new_tokens=NEW_TOKENS, stop_token_ids=(stop,))
    assert a.token_ids == b.token_ids == plain.token_ids[:j + 1] and a.finish_reason == b.finish_reason == "stop"
    assert a.text == b.text


def test_the_live_count_follows_each_token_of_a_step(smollm_engine, runs):
    """engine.progress counts the request's tokens (1 + decode_steps + accepted_tokens) for the live line, read as
    each piece of text arrives: a step's tokens are sent one at a time, and so counted, not all at its first token's
    text. A stop inside an accepted draft leaves the drafts after it out of the count and the timings."""
    engine = smollm_engine
    prompt, plain, j = first_case(runs, lambda r, j: r.token_ids.index(r.token_ids[j]) == j and j > 2)
    for config in (GenerationConfig(max_new_tokens=NEW_TOKENS, speculate=DEPTH),
                   GenerationConfig(max_new_tokens=NEW_TOKENS, speculate=DEPTH, stop_token_ids=(plain.token_ids[j],))):
        counts = []

        def on_text(text):
            progress = engine.progress
            counts.append(1 + progress.decode_steps + progress.accepted_tokens)

        engine.clear_prefix_cache()
        r = engine.generate(prompt, config, on_text=on_text)
        assert r.timings.accepted_tokens > 0 or config.stop_token_ids
        assert counts == list(range(1, len(counts) + 1)) and len(counts) >= len(r.token_ids) - 1
        assert 1 + r.timings.decode_steps + r.timings.accepted_tokens == len(r.token_ids)
    assert r.finish_reason == "stop" and len(r.token_ids) == j + 1


@pytest.mark.parametrize("depth", [0, DEPTH])
def test_the_live_healing_count_is_whole_by_the_first_text(smollm_engine, depth):
    """engine.progress.healing_tokens, read as the first text arrives, is the result's healing_tokens: a server's
    stream counts them as the prompt's in every event, as its final one does (GenerationResult.token_counts)."""
    engine = smollm_engine
    text = "def add(a, b):"
    ids = engine.tokenizer.encode(text)
    prompt = engine.tokenizer.encode(text[:-2])             # healed: "):" is left to the model
    seen = []
    engine.clear_prefix_cache()
    r = engine.generate(prompt, GenerationConfig(max_new_tokens=6, required_prefix="):", speculate=depth),
                        on_text=lambda _text: seen.append(engine.progress.healing_tokens))
    assert len(ids) == len(prompt) + 1 and r.healing_tokens >= 1 and seen
    assert set(seen) == {r.healing_tokens} and r.timings.healing_tokens == r.healing_tokens


def test_token_limit_inside_an_accepted_draft(smollm_engine, runs):
    prompt, plain, j = first_case(runs, lambda r, j: True)
    a, b = both(smollm_engine, prompt, max_new_tokens=j + 1)
    assert a.token_ids == b.token_ids == plain.token_ids[:j + 1] and a.finish_reason == b.finish_reason == "length"


def test_stop_string_inside_an_accepted_draft(smollm_engine, runs):
    tok = smollm_engine.tokenizer

    def text_of(r, j):
        return tok.decode(r.token_ids[j:j + 1])

    def ok(r, j):
        piece = text_of(r, j)
        return len(piece.strip()) >= 2 and r.text.find(piece) == len(tok.decode(r.token_ids[:j]))

    prompt, plain, j = first_case(runs, ok)
    stop = text_of(plain, j)
    streamed = [], []
    smollm_engine.clear_prefix_cache()
    a, b = (smollm_engine.generate(prompt, GenerationConfig(max_new_tokens=NEW_TOKENS, stop_strings=(stop,), speculate=k),
                                   on_text=out.append) for k, out in zip((0, DEPTH), streamed))
    assert a.token_ids == b.token_ids == plain.token_ids[:j + 1] and a.finish_reason == b.finish_reason == "stop"
    assert a.text == b.text == "".join(streamed[0]) == "".join(streamed[1]) and stop not in a.text


@pytest.mark.parametrize("penalties", [dict(repeat_penalty=1.05),
                                       dict(frequency_penalty=0.6, presence_penalty=0.3, penalty_last_n=-1,
                                            penalize_prompt=False)])
def test_greedy_output_under_penalties_is_identical_with_and_without_speculation(smollm_engine, runs, penalties):
    """Each verified position is penalized for the tokens before it, the drafts before it included: the drafts are
    checked against the penalized choice, and the output is plain decoding's, with drafts accepted on the way."""
    texts, results, _ = runs
    accepted, changed = 0, 0
    for prompt, unpenalized in list(zip(texts, results[0]))[::6]:        # one prompt in every other file
        plain, spec = both(smollm_engine, prompt, max_new_tokens=NEW_TOKENS, **penalties)
        assert spec.token_ids == plain.token_ids and spec.text == plain.text
        accepted += spec.timings.accepted_tokens
        changed += plain.token_ids != unpenalized.token_ids
    assert accepted >= 5 and changed >= 1


def test_a_draft_that_repeats_itself_is_checked_against_the_penalty_its_own_tokens_add(smollm_engine):
    """A run of one pair of tokens: drafts are more of it, and each draft token makes the next one costlier. Had the
    verification penalized every position for the tokens before the step only, it accepted more of the run than plain
    decoding writes (` ab` 16 times, against 4 and a change of course)."""
    prompt = smollm_engine.tokenizer.encode("row = 'ab ab ab ab ab ab ab ab ab ab ab")
    openai = dict(frequency_penalty=0.5, penalty_last_n=-1, penalize_prompt=False)
    plain, spec = both(smollm_engine, prompt, max_new_tokens=16, **openai)
    assert spec.token_ids == plain.token_ids and spec.timings.accepted_tokens > 0
    unpenalized = both(smollm_engine, prompt, max_new_tokens=16)[0]
    assert plain.text.count(" ab") < unpenalized.text.count(" ab") == 16, (plain.text, unpenalized.text)

def test_speculation_options_are_checked(smollm_engine):
    with pytest.raises(ValueError, match="speculate must be 0..15 draft tokens per step, got 16"):
        smollm_engine.generate([1, 2, 3], GenerationConfig(max_new_tokens=2, speculate=16))


# ---- rejection sampling ------------------------------------------------------------------------------------------

def chi_square_p(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of observed counts (n,) against probabilities (n,): bins expecting < 5 merged into one."""
    expected = probs * counts.sum()
    big = expected >= 5
    observed = torch.cat([counts[big], counts[~big].sum()[None]]).double()
    expected = torch.cat([expected[big], expected[~big].sum()[None]]).double()
    keep = expected > 0
    statistic = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    df = keep.sum().item() - 1
    return torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), statistic / 2).item()


def coarse(counts: torch.Tensor, probs: torch.Tensor, bins: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts and probabilities (bins,) of tokens grouped by rank into bins of about equal mass: a chi-square
    that has degrees of freedom where few draws spread over a flat distribution (no single token expects 5)."""
    order = probs.argsort(descending=True)
    which = ((probs[order].cumsum(0) - probs[order]) / probs.sum() * bins).long().clamp(max=bins - 1)   # (V,)
    return (torch.zeros(bins).index_add_(0, which, counts[order].float()),
            torch.zeros(bins).index_add_(0, which, probs[order].float()))


@pytest.mark.parametrize("config", [GenerationConfig(temperature=1.0), GenerationConfig(temperature=0.8, top_p=0.9)],
                         ids=["t1", "t0.8-top_p0.9"])
def test_rejection_sampling_keeps_the_distribution(tiny_checkpoint, config):
    """A verification step of a tiny model with two drafts, one likely and one not: over many draws the first
    token follows p0 exactly, when the first draft is accepted the second follows p1, and when both are the
    model's own third token follows p2 (chi-square, fixed seed)."""
    engine = load_model(tiny_checkpoint[0], device="cpu", max_context=48)
    model, vocab = engine.model, engine.model.config.vocab_size
    prompt = list(range(10, 30))
    model.prefill(torch.tensor([prompt[:-1]]))

    def verify(drafts):   # the pending token (the prompt's last) and two drafts in one step: logits (3, V)
        input_pos = torch.tensor([len(prompt) - 1])
        with torch.no_grad():
            return model.decode(torch.tensor([prompt[-1:] + drafts]), Decode(input_pos, (input_pos + 3).int(), "sdpa"))[0]

    def middling(p):      # a draft that is sometimes accepted, sometimes not
        return int((p - 0.4).abs().argmin())

    first_draft = middling(probabilities(verify([0, 0]), config)[0])
    drafts = [first_draft, middling(probabilities(verify([first_draft, 0]), config)[1])]
    logits = verify(drafts)
    probs = probabilities(logits, config)                                                # (3, V)
    assert 0.05 < probs[0, drafts[0]] < 0.95 and 0.05 < probs[1, drafts[1]] < 0.95
    generator = torch.Generator().manual_seed(1234)
    n = 4000
    first, second, third = torch.zeros(vocab), torch.zeros(vocab), torch.zeros(vocab)
    for _ in range(n):
        emitted = accept(logits, drafts, config, generator)
        first[emitted[0]] += 1
        if emitted[0] == drafts[0]:
            second[emitted[1]] += 1
        if emitted[:2] == drafts:           # every draft accepted: the token after them is drawn from p2 alone
            third[emitted[2]] += 1
    assert chi_square_p(first, probs[0]) > 1e-3
    assert chi_square_p(second, probs[1]) > 1e-3
    assert chi_square_p(*coarse(third, probs[2])) > 1e-3       # tens to hundreds of draws: too few for every token
    assert second.sum() == first[drafts[0]] and third.sum() == second[drafts[1]] >= 50


@pytest.mark.parametrize("package,name,cut", [("rich", "table.py", 1), ("httpx", "_urls.py", 9),
                                              ("jinja2", "filters.py", 17)])
def test_token_healing_with_speculation_gives_the_plain_greedy_output(smollm_engine, package, name, cut):
    """While healing constrains the next token, the speculative loop drafts nothing and samples one token a step
    from the restricted logits; once the required prefix is written, drafting resumes. Greedy output equals
    plain decoding's, token for token, the prefix is never shown, and the prefix of several tokens took as many
    draft-free steps."""
    from models.healing import token_bytes

    engine, tokenizer = smollm_engine, smollm_engine.tokenizer
    text = (Path(importlib.util.find_spec(package).submodule_search_locations[0]) / name).read_text()
    ids = tokenizer.encode(text)
    text = tokenizer.decode(ids[len(ids) // 3:len(ids) // 3 + PROMPT_TOKENS + 40])
    cut_at = len(text) - cut
    while text[cut_at - 1].isspace():       # the prompt ends after something, the prefix is what follows
        cut_at -= 1
    prompt, prefix = tokenizer.encode(text[:cut_at]), text[cut_at:]
    steps: list[tuple[int, list[int]]] = []

    def spy(logits, drafts, config, generator, *chain):
        emitted = accept(logits, drafts, config, generator, *chain)
        steps.append((len(drafts), emitted))
        return emitted

    results = {}
    for depth in (0, DEPTH):
        engine.clear_prefix_cache()
        streamed = []
        models.request_sampler.accept = spy
        try:
            results[depth] = engine.generate(prompt, GenerationConfig(
                max_new_tokens=NEW_TOKENS + 12, required_prefix=prefix, speculate=depth), on_text=streamed.append)
        finally:
            models.request_sampler.accept = accept
        assert "".join(streamed) == results[depth].text
    plain, spec = results[0], results[DEPTH]
    assert spec.token_ids == plain.token_ids and spec.text == plain.text
    pieces = token_bytes(tokenizer)
    written = b"".join(pieces[i] for i in plain.token_ids)
    assert written.startswith(prefix.encode()) and tokenizer.decode(plain.token_ids).startswith(prefix)
    # The tokens that wrote the prefix: the first from the prefill, each later one from a step without drafts.
    needed, covered = 0, b""
    while not covered.startswith(prefix.encode()):
        covered += pieces[plain.token_ids[needed]]
        needed += 1
    healing_steps = steps[:needed - 1]
    assert all(drafts == 0 and len(emitted) == 1 for drafts, emitted in healing_steps)
    assert spec.timings.drafted_tokens > 0          # and speculation resumed after it
    if cut > 1:
        assert needed > 1                           # the constraint really spanned several steps here


def test_the_default_depth_keeps_a_verification_step_in_one_kernel_tile(smollm_engine):
    """The engine's copy of the kernel's tile height is the kernel's own; the embedded model (3 query heads per
    KV head) keeps the measured default of 8 drafts, a model of 8 per KV head (CodeLlama-34B) gets 7."""
    from kernels.plan import MAX_BLOCK_M
    from models.engine import DEFAULT_SPECULATE, TILE_ROWS, Engine
    from models.llama import build_random_model

    assert TILE_ROWS == MAX_BLOCK_M
    assert smollm_engine.speculate == DEFAULT_SPECULATE["cpu"] == 8
    config = smollm_engine.model.config.replace(n_layers=1, dim=256, n_heads=16, n_kv_heads=2, head_dim=16, ffn_dim=64)
    grouped = build_random_model(config, device="cpu", dtype=torch.float32, max_len=64)
    assert Engine(grouped, None, context_length=64).speculate == TILE_ROWS // 8 - 1 == 7


def test_the_default_speculation_is_the_devices_capped_by_the_tile_whatever_the_weights(smollm_engine):
    """int4 weights speculate by default too, on a GPU as on a CPU (their verification of 8 tokens costs ~1.3 one-token
    steps on an H100, Run 51: the several-row 4-bit GEMV's wide tile); the cap is the tile's rows per query group."""
    import inspect

    from models.engine import DEFAULT_SPECULATE, TILE_ROWS, Engine, default_speculation
    from models.llama import build_random_model
    assert list(inspect.signature(default_speculation).parameters) == ["device_type", "heads_per_kv_head"]
    assert default_speculation("cuda", 1) == DEFAULT_SPECULATE["cuda"] and default_speculation("cpu", 3) == 8
    assert default_speculation("cuda", 8) == TILE_ROWS // 8 - 1 == 7
    config = smollm_engine.model.config.replace(n_layers=1)
    int4 = build_random_model(config, device="cpu", dtype=torch.float32, max_len=64, weights="int4")
    assert Engine(int4, None, context_length=64).speculate == DEFAULT_SPECULATE["cpu"]


def test_a_cancel_while_a_step_verifies_sends_none_of_its_tokens(smollm_engine, runs, monkeypatch):
    """Ctrl-C, a departed streaming client or a newer request, asked while a verification step runs: the tokens
    that step emits (up to 1 + DEPTH) are not sent after the cancel, and the cache stays consistent."""
    engine = smollm_engine
    prompt, plain, _ = first_case(runs, lambda r, j: True)
    taken, asked = [1], []                  # tokens emitted so far (the prefill's first); when the cancel came

    def cancel_during_a_verification(logits, drafts, config, generator, *chain):
        emitted = accept(logits, drafts, config, generator, *chain)
        if len(emitted) > 1 and not asked:  # a step that accepted drafts
            asked.append(taken[0])
        taken[0] += len(emitted)
        return emitted

    monkeypatch.setattr(models.request_sampler, "accept", cancel_during_a_verification)
    deltas = []
    engine.clear_prefix_cache()
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, speculate=DEPTH)
    r = engine.generate(prompt, config, on_text=deltas.append, should_stop=lambda: bool(asked))
    assert asked and r.finish_reason == "cancelled"
    assert r.token_ids == plain.token_ids[:asked[0]] and "".join(deltas) == r.text
    monkeypatch.setattr(models.request_sampler, "accept", accept)
    again = engine.generate(prompt, config)
    assert again.token_ids == plain.token_ids and again.reused_prefix_tokens == len(prompt) - 1


def _speculative_bench():
    path = Path(__file__).resolve().parents[2] / "bench" / "speculative_bench.py"
    spec = importlib.util.spec_from_file_location("speculative_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv, says", [
    (["--speculate", "8,x"], "draft depths expected"),                     # a traceback before
    (["--speculate", "0,8"], "each depth from 1 to 15"),                    # timed the plain run as "speculate 0"
    (["--kinds", "cpoy"], "--kinds cpoy: some of copy,fresh"),              # wrote an empty table over the results
    (["--max-tokens", "1"], "--max-tokens takes 2 or more"),
    (["--kv-cache", "q4"], "--kv-cache q4: fp8 or int8"),
    (["--only", "no such item"], "--only no such item: no copy-heavy or nothing to copy item"),
])
def test_speculative_bench_refuses_a_run_it_cannot_make_before_writing(argv, says, monkeypatch, tmp_path, capsys):
    """bench/speculative_bench.py: a mistake is status 2 and a line naming it, and the results stay as they were."""
    bench = _speculative_bench()
    monkeypatch.setattr(models, "load_model", lambda **kw: type("Engine", (), {"tokenizer": None})())
    workloads = types.ModuleType("speculative_workloads")        # no items: the --only case
    workloads.copy_heavy = workloads.nothing_to_copy = lambda tokenizer: []
    monkeypatch.setitem(sys.modules, "speculative_workloads", workloads)
    out = tmp_path / "speculative-cpu"
    with pytest.raises(SystemExit) as exit:
        bench.main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and says in err and err.count("\n") == 1     # one line, not usage + error
    assert list(tmp_path.iterdir()) == []

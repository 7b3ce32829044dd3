"""A checkpoint whose greedy answer is known in advance, for server tests whose subject is how an answer is carried
(line ends, stop strings, streaming, limits), not what a model writes: the embedded model's tokenizer (text is
handled token for token as with it), and 2 layers of width 64 whose attention and MLP write nothing, so each next
token is a lookup of the last one. It writes these lines over and over, each token as the embedded model spells it:

            self.y = y
                return

        def reset(self):

a line end, "y" before one, two lines before a blank line (an infill at a line's end stops at a blank line), a
blank line; every token once (between the lines, each line end is another token). Any other token is followed by
the first, which begins with a line end (a prompt healed at its last line end is continued). The embedded SmolLM2
decodes ~12 tokens a second on one core of this CPU; this model hundreds, through the same engine and server."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

CYCLE = "\n        self.y = y\n            return\n\n    def reset(self):"
WIDTH = 64


def cycle_ids(tokenizer) -> list[int]:
    """CYCLE's tokens; each token once, so that the last token says which comes next."""
    ids = tokenizer.encode(CYCLE, add_special_tokens=False)
    assert len(set(ids)) == len(ids) < WIDTH, [tokenizer.decode([i]) for i in ids]
    return ids


def save_table_model(folder: Path, embedded: Path) -> Path:
    """The table model in `folder`, with the tokenizer files of the embedded model's converted folder `embedded`."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(embedded / name, folder / name)
    source = json.loads((embedded / "config.json").read_text(encoding="utf-8"))
    ids = cycle_ids(AutoTokenizer.from_pretrained(folder))
    config = LlamaConfig(vocab_size=source["vocab_size"], hidden_size=WIDTH, intermediate_size=2 * WIDTH,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=source["max_position_embeddings"],
                         bos_token_id=source["bos_token_id"], eos_token_id=source["eos_token_id"],
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:          # the residual stream stays the last token's embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embed, head = model.model.embed_tokens.weight, model.lm_head.weight
        embed.zero_()
        head.zero_()
        embed[:, 0] = 1.0                         # every token: row 0, whose next token is the cycle's first
        head[ids[0], 0] = 2.0
        for k, token in enumerate(ids):           # the cycle's k-th token: row k + 1, the next one's row
            embed[token] = 0.0
            embed[token, k + 1] = 1.0
            head[ids[(k + 1) % len(ids)], k + 1] = 2.0
    model.save_pretrained(folder)
    return folder

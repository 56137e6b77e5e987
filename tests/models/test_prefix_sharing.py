"""Running each prompt once for its G completions (models/prefix_sharing.py) changes the cost, never
the numbers: the same sampled tokens as `generate` for the same seed, and the same log-probs and
gradients as the plain forward over every prompt + completion sequence."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import compose_config, family_folder
from support.numerics import assert_close_normwise
from support.prefix_sharing import G, prompt_batch

from othink_mr1.data.batch_layout import append_completions, model_inputs, repeat_samples
from othink_mr1.data.collate import PromptCollator
from othink_mr1.methods.grpo import GRPOModule
from othink_mr1.methods.kl_schedules import ConstantKL
from othink_mr1.models.decoding import StaticKV, filter_logits
from othink_mr1.models.prefix_sharing import grouped_completion_logits, sample_groups, supports_prefix_sharing
from othink_mr1.models.rollouts import completion_mask, suppressed_token_ids, token_log_probs


def random_completions(tokenizer, rows: int, length: int, seed: int = 0) -> torch.Tensor:
    """Random completions with an end-of-turn token at a random place (or none), pads after it."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, len(tokenizer), (rows, length), generator=gen)
    for row in range(rows):
        stop = int(torch.randint(1, length + 3, (1,), generator=gen))
        if stop <= length:
            ids[row, stop - 1] = tokenizer.eos_token_id
            ids[row, stop:] = tokenizer.pad_token_id
    return ids


def plain_logits(model, batch, completion_ids, mask):
    inputs = append_completions(repeat_samples(batch, G), completion_ids, mask)
    return model(**inputs, logits_to_keep=completion_ids.shape[1] + 1).logits[:, :-1]


@pytest.fixture(scope="module")
def qwen_family(request, tiny):
    """(model, processor) of the embedded Qwen2-VL or a tiny Qwen2.5-VL / Qwen3-VL folder."""
    if request.param == "qwen2_vl":
        return tiny
    from othink_mr1.models.factory import load_local

    return load_local(family_folder(request.param))


def test_the_tiny_model_qualifies(tiny):
    assert supports_prefix_sharing(tiny[0])
    assert not supports_prefix_sharing(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("qwen_family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"], indirect=True)
@pytest.mark.parametrize("task_name", ["counting", "geometry", "counting_multi"])
def test_shared_prompt_log_probs_and_gradients_equal_the_plain_forward(qwen_family, task_name, threads):
    """On every Qwen family, on prompts with one or two images (counting_multi mixes them), at each thread
    count. Equal up to the order of float sums (support/numerics.py): log-probs to the vocabulary's length
    (the log-softmax), gradients to the batch's token count (a weight gradient sums over every token)."""
    model, processor = copy.deepcopy(qwen_family[0]).train(), qwen_family[1]
    batch = prompt_batch(processor, task_name)
    assert batch["attention_mask"].min() == 0, "the prompts should need left padding"
    if task_name == "counting_multi":
        assert set(batch["meta"]["image_counts"]) == {1, 2}
    completion_ids = random_completions(processor.tokenizer, 3 * G, 12)
    mask = completion_mask(completion_ids, processor.tokenizer.eos_token_id)
    valid = mask.bool()

    results = []
    for logits_fn in (lambda: plain_logits(model, batch, completion_ids, mask),
                      lambda: grouped_completion_logits(model, model_inputs(batch), completion_ids, mask, G)):
        model.zero_grad()
        logp = token_log_probs(logits_fn(), completion_ids)
        (logp * mask).sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (plain, plain_grads), (shared, shared_grads) = results
    assert shared.shape == plain.shape == completion_ids.shape
    assert_close_normwise(shared[valid], plain[valid], terms=len(processor.tokenizer), name="log-probs")
    # Every parameter, the vision tower included, gets the same gradient (the G prompt copies' sum).
    assert shared_grads.keys() == plain_grads.keys() and any("visual" in n for n in shared_grads)
    tokens = G * batch["input_ids"].numel() + completion_ids.numel()  # every position of the plain forward
    for name, grad in plain_grads.items():
        assert_close_normwise(shared_grads[name], grad, terms=tokens, name=name)


@pytest.mark.parametrize("options", [{}, {"top_k": 7}, {"top_p": 0.8, "temperature": 0.7}, {"min_new_tokens": 12}])
def test_sampling_draws_the_same_tokens_as_generate(tiny, options):
    model, processor = tiny[0].eval(), tiny[1]
    tok = processor.tokenizer
    batch = prompt_batch(processor, "geometry")
    special = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(3)
    prompts = repeat_samples(batch, G)
    expected = model.generate(**prompts, do_sample=True, max_new_tokens=16, suppress_tokens=suppressed_token_ids(processor),
                              top_k=options.get("top_k"), top_p=options.get("top_p", 1.0),
                              temperature=options.get("temperature", 1.0), min_new_tokens=options.get("min_new_tokens", 0),
                              **special)[:, prompts["input_ids"].shape[1]:]
    torch.manual_seed(3)
    ours = sample_groups(model, model_inputs(batch), G, 16, suppress_token_ids=suppressed_token_ids(processor),
                         **options, **special)
    assert ours.shape == expected.shape == (3 * G, 16)
    assert torch.equal(ours, expected)
    assert not torch.isin(ours, torch.tensor(suppressed_token_ids(processor))).any()


def test_sampling_stops_once_every_row_has_ended(tiny):
    model, processor = copy.deepcopy(tiny[0]).eval(), tiny[1]
    tok = processor.tokenizer
    batch = prompt_batch(processor, "counting", n=2)
    vocab = model.get_output_embeddings().weight.shape[0]

    class EndsAfterThree(torch.nn.Module):
        """Logits that pick a row-dependent token twice, then end the turn (row 0 ends at once)."""

        calls = 0

        def forward(self, hidden):
            logits = torch.full((hidden.shape[0], vocab), -1e4)
            for row in range(hidden.shape[0]):
                ends = self.calls >= (0 if row == 0 else 2)
                logits[row, tok.eos_token_id if ends else 30 + row] = 1e4
            self.calls += 1
            return logits

    model.lm_head = EndsAfterThree()
    ids = sample_groups(model, model_inputs(batch), G, 16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert ids.shape == (2 * G, 3)  # no token is sampled after the last row ends
    assert ids[0].tolist() == [tok.eos_token_id, tok.pad_token_id, tok.pad_token_id]
    assert ids[5].tolist() == [35, 35, tok.eos_token_id]
    # min_new_tokens blocks the end of turn until then: every row ends exactly at token 6.
    model.lm_head = EndsAfterThree()
    ids = sample_groups(model, model_inputs(batch), G, 16, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                        min_new_tokens=5)
    assert ids.shape == (2 * G, 6)
    assert (ids[:, 5] == tok.eos_token_id).all() and not (ids[:, :5] == tok.eos_token_id).any()


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
    scores = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(scores, top_k=2)).tolist() == [[True, True, False, False]]
    # The smallest set whose probability reaches top_p, and never less than one token.
    assert torch.isfinite(filter_logits(scores, top_p=0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(scores, top_p=0.01)).tolist() == [[True, False, False, False]]
    assert torch.equal(filter_logits(scores), scores)


def test_static_cache_writes_one_position_in_place_and_gathers_rows():
    keys, values = torch.randn(2, 1, 3, 4), torch.randn(2, 1, 3, 4)
    prefill = [type("Layer", (), {"keys": keys, "values": values})()]
    cache = StaticKV.from_prefill(prefill, group_size=2, capacity=5)
    assert cache.keys[0].shape == (4, 1, 5, 4)
    assert torch.equal(cache.keys[0][:, :, :3], keys.repeat_interleave(2, dim=0))
    new_k, new_v = torch.randn(4, 1, 1, 4), torch.randn(4, 1, 1, 4)
    cache.write_at.fill_(3)
    k, v = cache.update(new_k, new_v, 0)
    assert k.data_ptr() == cache.keys[0].data_ptr()  # in place, full capacity returned
    assert torch.equal(k[:, :, 3:4], new_k) and torch.equal(v[:, :, 3:4], new_v) and not k[:, :, 4].any()
    rows = torch.tensor([3, 0])
    assert torch.equal(cache.select(rows).keys[0], k[rows]) and torch.equal(cache.select(rows).values[0], v[rows])


def test_grpo_loss_is_the_same_with_and_without_sharing(tmp_path, tiny, threads):
    """The module's switch (method.share_prompt_prefix) changes nothing but the cost, at each thread count."""
    model, processor = copy.deepcopy(tiny[0]), tiny[1]
    batch = prompt_batch(processor, "counting", n=2)
    grads = []
    for share in (True, False):
        cfg = compose_config(["model=tiny", f"method.share_prompt_prefix={share}", f"method.num_generations={G}"],
                             output_dir=tmp_path)
        module = GRPOModule(model, processor, cfg.method, total_steps=4, kl=ConstantKL(0.1),
                            reference=copy.deepcopy(tiny[0]).eval(), scorer="counting", max_new_tokens=10)
        assert module.shares_prompts(batch) is share
        torch.manual_seed(0)
        rollout = module.build_rollout(batch, module.sample(batch))
        assert (rollout.prompts is not None) is share
        model.zero_grad()
        module.accumulate_gradients([rollout], beta=0.1, backward=lambda loss: loss.backward())
        grads.append((rollout.completion_ids, rollout.ref_logp,
                      {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (ids_a, ref_a, grad_a), (ids_b, ref_b, grad_b) = grads
    assert torch.equal(ids_a, ids_b)
    mask = completion_mask(ids_a, processor.tokenizer.eos_token_id).bool()
    assert_close_normwise(ref_a[mask], ref_b[mask], terms=len(processor.tokenizer), name="reference log-probs")
    tokens = ids_a.shape[0] * (batch["input_ids"].shape[1] + ids_a.shape[1])
    for name in grad_a:
        assert_close_normwise(grad_a[name], grad_b[name], terms=tokens, name=name)


def test_shared_log_probs_equal_the_plain_forward_when_a_prompts_images_differ_in_shape(tiny, threads):
    """Each prompt's image grids are repeated with the prompt (data.batch_layout), not each grid G times in
    a row: that order pairs the G copies of a two-image prompt with the wrong grids once its images differ."""
    from othink_mr1.data.records import Example
    from othink_mr1.data.synthetic import counting

    model, processor = tiny
    scene = [counting.make_item("train", i, 0, 112)["image"] for i in range(3)]
    examples = [Example(images=[scene[0], scene[1].resize((56, 168))], question="How many?", answer="3", target="", index=0),
                Example(images=[scene[2].resize((84, 112))], question="How many objects?", answer="3", target="", index=1)]
    batch = PromptCollator(processor, "{question}")(examples)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 8], [1, 12, 4], [1, 8, 6]]
    completion_ids = random_completions(processor.tokenizer, 2 * G, 8)
    mask = completion_mask(completion_ids, processor.tokenizer.eos_token_id)
    with torch.no_grad():
        plain = token_log_probs(plain_logits(model, batch, completion_ids, mask), completion_ids)
        shared = token_log_probs(grouped_completion_logits(model, model_inputs(batch), completion_ids, mask, G),
                                 completion_ids)
    assert_close_normwise(shared[mask.bool()], plain[mask.bool()], terms=len(processor.tokenizer), name="log-probs")

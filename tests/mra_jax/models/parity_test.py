"""The NNX models against transformers' MRA models, on CPU, with random weights.

transformers' MRA needs a CUDA kernel it fetches at run time and returns zeros without it, so
each test puts CPU stand-ins of the kernel's three entry points in its place
(`torch_kernels.py`). Both sides then compute MRA-2 in float32 and must agree to 1e-4
relative (max |ours - theirs| / max |theirs|); they agree to about 5e-7.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mra_jax import models
from tests.mra_jax.models import tiny, torch_kernels

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
# torch's spinning worker threads and XLA's share the cores: torch's tiny forwards took 100x
# longer with its default threads next to jax.
torch.set_num_threads(1)

TOL = 1e-4
FIELDS = {
  "MraModel": ("last_hidden_state",),
  "MraForMaskedLM": ("logits",),
  "MraForSequenceClassification": ("logits",),
  "MraForMultipleChoice": ("logits",),
  "MraForTokenClassification": ("logits",),
  "MraForQuestionAnswering": ("start_logits", "end_logits"),
}


def _save(model, folder, fmt: str) -> None:
  """transformers' own save, or (fmt="bin") its full state dict as pytorch_model.bin.

  The .bin keeps the tied decoder tensors that transformers' safetensors leave out, as the
  published uw-madison checkpoints do.
  """
  model.save_pretrained(folder)
  if fmt == "bin":
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))


def _theirs(model, ids, mask, types):
  as_torch = lambda x: torch.from_numpy(np.asarray(x)).long()
  with torch.no_grad():
    return model(
      input_ids=as_torch(ids),
      attention_mask=as_torch(mask),
      token_type_ids=as_torch(types),
      output_hidden_states=True,
    )


def _ours(folder, ids, mask, types, *, jit=False, **options):
  """Our model's outputs; `jit` for shapes no other test runs (one compile, not op by op)."""
  model = models.from_pretrained(folder, **options)
  call = lambda m, *args: m(*args, output_hidden_states=True)
  return (nnx.jit(call) if jit else call)(model, *map(jnp.asarray, (ids, mask, types)))


def _errors(name, ours, theirs) -> dict[str, float]:
  errors = {f: tiny.rel_err(getattr(ours, f), getattr(theirs, f).numpy()) for f in FIELDS[name]}
  errors["hidden_states"] = max(
    tiny.rel_err(a, b.numpy()) for a, b in zip(ours.hidden_states, theirs.hidden_states)
  )
  return errors


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
@pytest.mark.parametrize("name", tiny.CLASS_NAMES)
def test_every_class_matches_transformers_on_a_padded_batch(name, fmt, tmp_path, monkeypatch):
  torch_kernels.install(monkeypatch)
  theirs_model = tiny.transformers_model(name)
  _save(theirs_model, tmp_path, fmt)
  # Two rows in every case (one example of two choices here), so shapes compile once.
  if name == "MraForMultipleChoice":
    ids, mask, types = tiny.inputs(batch=1, choices=2)
  else:
    ids, mask, types = tiny.inputs(batch=2)
  theirs = _theirs(theirs_model, ids, mask, types)
  # transformers lays the padding mask out across examples (see RuntimeOptions.mask_layout).
  ours = _ours(tmp_path, ids, mask, types, mask_layout="transformers")
  errors = _errors(name, ours, theirs)
  assert max(errors.values()) <= TOL, errors


def test_priors_and_head_dim_32_match_transformers(tmp_path, monkeypatch):
  # The 4096-8-d3 checkpoint's priors (first block, diagonal) with head dim 32 (no padding),
  # at a budget that covers the prior tiles and every row's best tile, as at full size:
  # where the budget cuts through tied scores, transformers' top-k picks an unspecified tile.
  torch_kernels.install(monkeypatch)
  overrides = {
    "num_attention_heads": 2,
    "max_position_embeddings": 256,
    "block_per_row": 4,
    "initial_prior_first_n_blocks": 1,
    "initial_prior_diagonal_n_blocks": 1,
  }
  theirs_model = tiny.transformers_model("MraForMaskedLM", **overrides)
  _save(theirs_model, tmp_path, "safetensors")
  ids, mask, types = tiny.inputs(batch=2, length=256)
  theirs = _theirs(theirs_model, ids, mask, types)
  ours = _ours(tmp_path, ids, mask, types, jit=True, mask_layout="transformers")
  errors = _errors("MraForMaskedLM", ours, theirs)
  assert max(errors.values()) <= TOL, errors


def test_default_mask_layout_is_per_example(tmp_path, monkeypatch):
  # transformers' padded batch of B > 1 gives most heads another example's mask; the default
  # layout gives every example its own, i.e. what transformers computes one example at a time.
  torch_kernels.install(monkeypatch)
  theirs_model = tiny.transformers_model("MraModel")
  _save(theirs_model, tmp_path, "safetensors")
  ids, mask, types = tiny.inputs(batch=2)
  ours = _ours(tmp_path, ids, mask, types).last_hidden_state
  for b in range(2):
    alone = _theirs(theirs_model, ids[b : b + 1], mask[b : b + 1], types[b : b + 1])
    assert tiny.rel_err(ours[b : b + 1], alone.last_hidden_state.numpy()) <= TOL
  together = _theirs(theirs_model, ids, mask, types).last_hidden_state.numpy()
  assert tiny.rel_err(ours, together) > 1e-2  # the layouts differ where masks differ


def test_without_its_kernel_transformers_attention_is_zero():
  # Why the stand-ins: on CPU transformers' MRA attention silently returns zeros.
  from transformers.models.mra import modeling_mra

  assert modeling_mra.mra_cuda_kernel is None
  q = torch.randn(1, 2, 64, 32)
  out = modeling_mra.mra2_attention(q, q, q, torch.ones(2, 64), 4, "full")
  assert not out.any()


@pytest.mark.parametrize("name", tiny.CLASS_NAMES)
def test_save_pretrained_loads_in_transformers(name, tmp_path, monkeypatch):
  # From a .bin (tied decoder tensors included) to our model.safetensors (left out, as
  # transformers leaves them out) and back into transformers.
  torch_kernels.install(monkeypatch)
  theirs_model = tiny.transformers_model(name)
  _save(theirs_model, tmp_path / "theirs", "bin")
  models.save_pretrained(models.from_pretrained(tmp_path / "theirs"), tmp_path / "ours")

  reloaded, info = getattr(transformers, name).from_pretrained(
    tmp_path / "ours", output_loading_info=True
  )
  assert not any(info.values()), info  # no missing, unexpected or mismatched keys
  assert reloaded.config.architectures == [name]
  assert reloaded.config.id2label == theirs_model.config.id2label
  for key, tensor in theirs_model.state_dict().items():
    assert torch.equal(reloaded.state_dict()[key], tensor), key
  if name == "MraForSequenceClassification":  # and it computes the same (one class is enough)
    ids, mask, types = tiny.inputs(batch=2)
    theirs = _theirs(reloaded.eval(), ids, mask, types)
    again = _ours(tmp_path / "ours", ids, mask, types, mask_layout="transformers")
    assert tiny.rel_err(again.logits, theirs.logits.numpy()) <= TOL

"""Pretrained MRA models (transformers' MRA family) in Flax NNX, and their checkpoints.

`from_pretrained(folder)` reads a local transformers snapshot (config.json and
model.safetensors or pytorch_model.bin) and returns the model its `architectures` entry
names; `save_pretrained(model, folder)` writes one transformers loads. See docs/models.md.
"""

from mra_jax.models.config import ConfigError as ConfigError
from mra_jax.models.config import MraModelConfig as MraModelConfig
from mra_jax.models.convert import WeightsError as WeightsError
from mra_jax.models.heads import MraForMaskedLM as MraForMaskedLM
from mra_jax.models.heads import MraForMultipleChoice as MraForMultipleChoice
from mra_jax.models.heads import MraForQuestionAnswering as MraForQuestionAnswering
from mra_jax.models.heads import MraForSequenceClassification as MraForSequenceClassification
from mra_jax.models.heads import MraForTokenClassification as MraForTokenClassification
from mra_jax.models.modeling import MraModel as MraModel
from mra_jax.models.modeling import RuntimeOptions as RuntimeOptions
from mra_jax.models.outputs import BaseModelOutput as BaseModelOutput
from mra_jax.models.outputs import MaskedLMOutput as MaskedLMOutput
from mra_jax.models.outputs import MultipleChoiceModelOutput as MultipleChoiceModelOutput
from mra_jax.models.outputs import QuestionAnsweringModelOutput as QuestionAnsweringModelOutput
from mra_jax.models.outputs import SequenceClassifierOutput as SequenceClassifierOutput
from mra_jax.models.outputs import TokenClassifierOutput as TokenClassifierOutput
from mra_jax.models.pretrained import ARCHITECTURES as ARCHITECTURES
from mra_jax.models.pretrained import CheckpointError as CheckpointError
from mra_jax.models.pretrained import from_pretrained as from_pretrained
from mra_jax.models.pretrained import save_pretrained as save_pretrained

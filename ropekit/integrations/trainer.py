"""A ``transformers.TrainerCallback`` that carries the receipt through training.

It works unchanged with the transformers ``Trainer`` and with TRL's trainers
(``SFTTrainer``, ``DPOTrainer``, ``GRPOTrainer``), which all run the same callback
events:

* **train start**: the scaling the receipt records must have landed on the model
  being trained (its rotary modules are compared with the closed form and its
  config with the receipt); otherwise training is refused with
  :class:`~ropekit.errors.LandingError`. A configured training length
  (``max_length``) that never exceeds the original window draws a warning: such a
  fine-tune does not teach the model the new window.
* **every training forward**: the longest sequence (the highest position id + 1,
  which is what rope sees) and the number of tokens (attention mask) are counted.
* **every checkpoint**, and the output folder at the end of training:
  ``rope_receipt.json`` is written, the receipt plus a ``training`` section, sealed
  like the rest.

The common path::

    model, receipt = ropekit.load_model(base, LongContextConfig(method="yarn", factor=4))
    trainer = SFTTrainer(model=model, args=args, train_dataset=data,
                         callbacks=[RopeReceiptCallback(receipt)])
    trainer.train()
    trainer.save_model()          # args.output_dir, where the receipt already is
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ropekit.constants import RECEIPT_FILENAME, dist_version
from ropekit.errors import InvalidConfigError
from ropekit.receipt import Receipt
from ropekit.scaling.engine import versions

#: the checkpoint folder prefix transformers uses (``transformers.trainer_utils.PREFIX_CHECKPOINT_DIR``)
CHECKPOINT_PREFIX = "checkpoint"
#: training arguments classes and the trainer each belongs to
TRAINERS = {"TrainingArguments": "transformers.Trainer", "Seq2SeqTrainingArguments": "transformers.Seq2SeqTrainer",
            "SFTConfig": "trl.SFTTrainer", "DPOConfig": "trl.DPOTrainer", "GRPOConfig": "trl.GRPOTrainer"}


class ShortTrainingWarning(UserWarning):
    """The training length never exceeds the original window: the new window is not trained."""


class RopeReceiptCallback(TrainerCallback):
    """Verify the landing at train start; write ``rope_receipt.json`` at every save.

    :param receipt: the receipt of the scaling applied to the model being trained
        (``ropekit.load_model`` or ``ropekit.apply_rope_scaling`` returns it).
    :param trainer_name: recorded in the training section; by default it is read from
        the training arguments' class (``SFTConfig`` -> ``trl.SFTTrainer``).
    """

    def __init__(self, receipt: Receipt, *, trainer_name: str | None = None) -> None:
        if not isinstance(receipt, Receipt):
            raise InvalidConfigError(f"RopeReceiptCallback needs the Receipt ropekit returned, not "
                                     f"{type(receipt).__name__}; pass the receipt of ropekit.load_model")
        self.receipt = receipt
        self.trainer_name = trainer_name
        self.longest_sequence = 0
        self.tokens = 0
        self._hook: Any = None
        self._args_class: str | None = None
        self._configured: int | None = None

    # --- the numbers ------------------------------------------------------------------
    @property
    def original_window(self) -> int:
        return int(self.receipt.long_context["original_max_position_embeddings"])

    @property
    def new_window(self) -> int:
        return int(self.receipt.long_context["new_max_position_embeddings"])

    def training_section(self, state: Any) -> dict[str, Any]:
        """What the receipt records about the training run so far."""
        return {
            "trainer": self.trainer_name or TRAINERS.get(self._args_class or "", self._args_class),
            "arguments": self._args_class,
            "steps": int(state.global_step),
            "epoch": float(state.epoch) if state.epoch is not None else None,
            "longest_sequence": self.longest_sequence,
            "tokens": self.tokens,
            "configured_length": self._configured,
            "original_window": self.original_window,
            "new_window": self.new_window,
            "exceeds_original_window": self.longest_sequence > self.original_window,
            "versions": {**versions(), "torch": dist_version("torch"), "trl": dist_version("trl"),
                         "accelerate": dist_version("accelerate")},
        }

    def receipt_for(self, state: Any, model: Any) -> Receipt:
        """The receipt with the training section, sealed.

        Fields the trainer set on the model's config that rope does not read (special
        token ids aligned with the tokenizer, ``use_cache`` under gradient checkpointing)
        are recorded by hash in ``training.config_fields_sha256``; a rope value that
        changed during training is refused.
        """
        from ropekit.config_match import field_differences, rope_differences
        from ropekit.errors import ReceiptMismatchError
        from ropekit.receipt import config_field_hashes, transformers_reading
        from ropekit.scaling.config_view import ConfigView

        view = ConfigView(model.config)
        recorded_rope = self.receipt.get("rope_values")  # receipts written before it was recorded lack it
        moved = rope_differences(recorded_rope, view) if isinstance(recorded_rope, dict) else []
        if moved:
            where, found, wanted = moved[0]
            raise ReceiptMismatchError(f"the model's config field {where} is {found!r} after training, the receipt "
                                       f"says {wanted!r}; rope settings must not change while training")
        current = config_field_hashes(view)
        changed = field_differences(self.receipt.get("config_fields_sha256") or {}, current,
                                    transformers_reading(view))
        section = self.training_section(state)
        section["config_fields_sha256"] = {name: current.get(name) for name in changed}
        return self.receipt.with_fields(training=section)

    def write(self, folder: str | os.PathLike[str], state: Any, model: Any) -> Path:
        """Write ``rope_receipt.json`` with the training section into ``folder``."""
        from ropekit.files import atomic_write

        path = Path(folder) / RECEIPT_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, self.receipt_for(state, model).to_json().encode("utf-8"))
        return path

    # --- callback events --------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        from ropekit.landing.check import check_model

        if model is None:
            raise InvalidConfigError("the trainer passed no model to RopeReceiptCallback.on_train_begin; "
                                     "use a transformers or TRL trainer")
        check_model(model, receipt=self.receipt).raise_if_not_landed()
        self._args_class = type(args).__name__
        configured = getattr(args, "max_length", None)
        self._configured = configured if isinstance(configured, int) and configured > 0 else None
        if self._configured is not None and self._configured <= self.original_window:
            warnings.warn(f"training length max_length={self._configured} never exceeds the original window "
                          f"of {self.original_window} tokens: this fine-tune does not train the new window of "
                          f"{self.new_window}; raise max_length (and feed sequences that long)",
                          ShortTrainingWarning, stacklevel=2)
        if state.global_step > 0:
            self._resume(args, state)
        self._attach(model)

    def on_save(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}-{state.global_step}"
            if folder.is_dir():
                self.write(folder, state, model)

    def on_train_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if state.is_world_process_zero:
            self.write(args.output_dir, state, model)
        if self._configured is None and 0 < self.longest_sequence <= self.original_window:
            warnings.warn(f"the longest training sequence had {self.longest_sequence} tokens, within the original "
                          f"window of {self.original_window}: this fine-tune did not train the new window of "
                          f"{self.new_window}", ShortTrainingWarning, stacklevel=2)

    # --- internals --------------------------------------------------------------------
    def _attach(self, model: Any) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        import torch

        if not (module.training and torch.is_grad_enabled()):
            return  # generation, evaluation and reference-model passes do not train
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        positions = kwargs.get("position_ids")
        if ids is None or not hasattr(ids, "shape"):
            ids = kwargs.get("inputs_embeds")
            if ids is None:
                return
            ids = ids[..., 0]
        if positions is not None and hasattr(positions, "max") and positions.numel():
            longest = int(positions.max()) + 1
        elif mask is not None and hasattr(mask, "sum") and mask.dim() == 2:
            longest = int(mask.sum(dim=-1).max())
        else:
            longest = int(ids.shape[-1])
        self.longest_sequence = max(self.longest_sequence, longest)
        self.tokens += int(mask.sum()) if mask is not None and hasattr(mask, "sum") else int(ids.numel())

    def _resume(self, args: Any, state: Any) -> None:
        """Resumed from a checkpoint: its receipt must be this run's, and its counts carry on."""
        folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}-{state.global_step}"
        path = folder / RECEIPT_FILENAME
        if not path.is_file():
            return
        from ropekit.errors import ReceiptMismatchError

        stored = Receipt.load(path)
        field = stored.tampered_field()
        if field is not None:
            raise ReceiptMismatchError(f"receipt field {field!r} of {path} was edited after it was written; "
                                       "resume from an untouched checkpoint")
        if stored["model"] != self.receipt["model"] or stored["changes"] != self.receipt["changes"]:
            raise ReceiptMismatchError(f"{path} records another patch ({stored!r}) than this run "
                                       f"({self.receipt!r}); resume with the receipt of that checkpoint's model")
        training = stored.get("training") or {}
        self.longest_sequence = max(self.longest_sequence, int(training.get("longest_sequence") or 0))
        self.tokens += int(training.get("tokens") or 0)


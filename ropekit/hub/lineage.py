"""Model lineage: follow ``base_model`` in model cards to scaling a fine-tune inherits.

A fine-tune's config.json can lose the scaling its weights were trained with
(trainers and old transformers versions drop or null ``rope_scaling``, or write
the training length into ``max_position_embeddings``). The model card's
``base_model`` names the ancestor; its config tells the truth. The rule:

- follow ``base_model`` up to :data:`MAX_HOPS` hops, breadth first (nearest ancestor first);
- an ancestor whose config **ships scaling** (llama3, yarn, linear, longrope, dynamic)
  is inherited as is, with ``source`` set to the ancestor's Hub id;
- an ancestor that ships none but was **trained long**, i.e. whose trained window
  (its family's native window) is longer than the model's own, is inherited as
  ``rope_type="trained"``, factor 1, from the ancestor's window: the model's config
  understates what its weights saw, so extending from the shorter declared window
  would be wrong, and the compounding policy makes the user extend from the
  ancestor's window instead;
- the first ancestor that matches wins; an ancestor that cannot be read (no card,
  offline without a cached copy, an unknown family) is noted and skipped, never fatal;
- a config that ships scaling itself speaks for itself: its card is not read.

Only Hub ids are followed: a card can never make ropekit read a local path.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ropekit.errors import InvalidConfigError, RopekitError
from ropekit.registry.family import ShippedScaling
from ropekit.registry.manager import get_registry
from ropekit.scaling.config_view import ConfigView

MAX_HOPS = 3
README = "README.md"
TRAINED = "trained"


@dataclass
class Ancestor:
    """A base model's config and where it was read from."""

    model_id: str
    config: dict[str, Any]
    source: str  # hub | cache | catalog
    revision: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Lineage:
    """What following the model cards found."""

    chain: list[str] = field(default_factory=list)  # ancestors read, nearest first
    inherited: ShippedScaling | None = None
    notes: list[str] = field(default_factory=list)


def card_base_models(readme: Path) -> list[str]:
    """The ``base_model`` entries of a model card's YAML front matter ([] when none)."""
    import yaml
    from huggingface_hub.repocard import metadata_load

    try:
        meta = metadata_load(readme)
    except (yaml.YAMLError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InvalidConfigError(f"model card {readme} has unreadable front matter ({first}); "
                                 "fix its YAML header") from None
    bases = (meta or {}).get("base_model")
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list):
        return []
    return [b.strip() for b in bases if isinstance(b, str) and b.strip()]


#: a model card larger than this is not read for lineage
MAX_CARD_BYTES = 1024 * 1024


def local_card_base_models(folder: Path) -> list[str]:
    """``base_model`` from a local model folder's README.md.

    Reads the text first so that a folder without a card naming a base never
    imports huggingface_hub.
    """
    readme = folder / README
    try:
        if not readme.is_file() or readme.stat().st_size > MAX_CARD_BYTES:  # no FIFOs, no giant files
            return []
        text = readme.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return []
    if not text.lstrip().startswith("---") or "base_model" not in text:
        return []
    return card_base_models(readme)


def own_window(config: dict[str, Any]) -> tuple[int, ShippedScaling | None]:
    """The model's own trained window and the scaling its config ships."""
    view = ConfigView(config)
    family = get_registry().family_for(view)
    site = family.rope_sites(view)[-1]
    return family.native_window(view, site), family.shipped_scaling(view, site)


def ancestor_scaling(config: dict[str, Any], ancestor_id: str, window: int) -> ShippedScaling | None:
    """Scaling a model with trained ``window`` inherits from this ancestor's config, or None."""
    view = ConfigView(config)
    family = get_registry().family_for(view)
    site = family.rope_sites(view)[-1]
    shipped = family.shipped_scaling(view, site)
    if shipped is not None:
        return dataclasses.replace(shipped, source=ancestor_id)
    trained = family.native_window(view, site)
    if trained > window:
        return ShippedScaling(TRAINED, 1.0, trained, trained, site.label, ancestor_id)
    return None


def follow(config: dict[str, Any], own_bases: Callable[[list[str]], list[str] | None],
           read_ancestor: Callable[[str], Ancestor], read_bases: Callable[[Ancestor, list[str]], list[str] | None],
           *, model_id: str | None = None, max_hops: int = MAX_HOPS) -> Lineage:
    """Walk the model card's ``base_model`` breadth first for inherited scaling.

    Nothing is read when the config ships scaling itself (it speaks for itself).

    :param own_bases: the bases the model's own card names (None: no card); appends
        what went wrong to the list it is given. ``read_bases`` does the same for an
        ancestor, and is called only when the walk must go further.
    :param read_ancestor: resolves a base's Hub id to an :class:`Ancestor`; raises
        a :class:`RopekitError` when it cannot, which is noted, never raised.
    :param model_id: the model's own Hub id, never read again as its own ancestor.
    """
    lineage = Lineage()
    try:
        window, shipped = own_window(config)
    except RopekitError as exc:
        window, shipped, unreadable = 0, None, exc
    else:
        unreadable = None
    if shipped is not None:
        return lineage
    bases = own_bases(lineage.notes)
    if not bases:
        return lineage
    if unreadable is not None:
        lineage.notes.append(f"lineage not followed: the config itself cannot be read ({unreadable})")
        return lineage
    queue = deque((base, 1) for base in bases)
    seen = {model_id.lower()} if model_id else set()
    while queue:
        base, hop = queue.popleft()
        if base.lower() in seen:
            continue
        seen.add(base.lower())
        try:
            ancestor = read_ancestor(base)
        except RopekitError as exc:
            lineage.notes.append(f"base model {base} not followed: {exc}")
            continue
        lineage.chain.append(ancestor.model_id)
        lineage.notes.extend(ancestor.notes)
        try:
            found = ancestor_scaling(ancestor.config, ancestor.model_id, window)
        except RopekitError as exc:
            lineage.notes.append(f"base model {ancestor.model_id} not checked: {exc}")
            found = None
        if found is not None:
            lineage.inherited = found
            hops = "1 hop" if hop == 1 else f"{hop} hops"
            lineage.notes.append(f"inherits {found.rope_type} x{found.factor:g} from base model "
                                 f"{ancestor.model_id} ({hops} up the model cards)")
            return lineage
        further = read_bases(ancestor, lineage.notes)
        if further:
            if hop < max_hops:
                queue.extend((b, hop + 1) for b in further)
            else:
                lineage.notes.append(f"lineage stopped after {max_hops} hops at {ancestor.model_id}")
    return lineage

"""Hugging Face ``generate(..., return_dict_in_generate=True, output_scores=True)`` outputs.

The token log-probability of each generated token is the log-softmax of that step's scores at the
chosen token: what ``model.compute_transition_scores(out.sequences, out.scores,
normalize_logits=True)`` returns for greedy and sampled decoding. ``out.logits`` (raw logits,
``output_logits=True``) is preferred over ``out.scores`` (after temperature, top-k, top-p) when
present. Beam search needs the beam indices: pass ``compute_transition_scores(...)`` rows to
``from_transition_scores`` instead. NumPy is imported only here (transformers depends on it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from calmon_client.adapters.fields import ScoreFields, field

__all__ = ["from_generate", "from_transition_scores"]


def _array(value: Any) -> Any:
    import numpy as np

    if hasattr(value, "detach"):  # a torch tensor, possibly on a GPU and in half precision
        value = value.detach().float().cpu().numpy()
    return np.asarray(value, dtype=np.float64)


def from_generate(
    output: Any, index: int = 0, eos_token_id: int | Sequence[int] | None = None
) -> ScoreFields:
    """``token_logprobs`` of sequence ``index`` of a generate() output, up to and including its
    first end-of-sequence token (the padding after it is not part of the answer)."""
    import numpy as np

    steps = field(output, "logits") or field(output, "scores")
    if not steps:
        raise ValueError(
            "generate() output carries no scores; pass return_dict_in_generate=True, output_scores=True"
        )
    sequence = _array(field(output, "sequences"))[index]
    generated = sequence[len(sequence) - len(steps) :].astype(np.int64)
    stops = {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id or ())
    values: list[float] = []
    for step, token in zip(steps, generated, strict=True):
        row = _array(step)[index]
        top = row.max()
        values.append(float(row[token] - top - np.log(np.exp(row - top).sum())))
        if int(token) in stops:
            break
    return {"token_logprobs": values}


def from_transition_scores(row: Sequence[float] | Any, length: int | None = None) -> ScoreFields:
    """``token_logprobs`` from one row of ``model.compute_transition_scores(..., normalize_logits=True)``;
    ``length``: how many generated tokens are the answer (a shorter sequence of a batch is padded)."""
    values = [float(v) for v in (row if isinstance(row, list) else _array(row).tolist())][:length]
    if not values:
        raise ValueError("no token log-probabilities in the row")
    return {"token_logprobs": values}
